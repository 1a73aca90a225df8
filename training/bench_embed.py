"""Embedding speed on this CPU: PyTorch eager vs onnxruntime fp32 vs onnxruntime int8 (DESIGN §8).

For each preset the model is built from the preset (untrained weights: speed does not depend on them), saved,
and exported with its int8 variant; PyTorch eager serves it as `instructue_plugin.load` serves a trained folder
(LoRA merged into the backbone, as in the export). Each backend then embeds the same realistic Feast rows
(Feast-shaped rows with up to 32 items per source and an instruction), at each batch size, with a warm item
cache:

- `graph`: the user-embedding graph alone on the prepared arrays (what the backends differ in);
- `embed`: `Embedder.embed` end to end (featurize, lay out, look items up, run, normalize).

Backends are timed in turn, in short blocks repeated over a few cycles, so that a noisy neighbour slows them
alike; the speed-ups are also given per cycle (each backend against its neighbour block), which shows whether a
ratio holds throughout the run or only on average. The backbone's FLOPs are counted for the real sequence
lengths (decoder matmuls, 2·MACs per real token, plus the attention scores and values over each user's real
length) and divided by the graph time, then compared with this machine's fp32 GEMM rate measured in the same
run (torch, numpy and onnxruntime on 2048x2048; the best counts).
At the largest batch, PyTorch's profiler and onnxruntime's profiling split each fp32 graph's time by operator
type (`operator_shares`): where the time goes that the GEMM rate does not explain.

    from training.bench_embed import run
    report = run(presets=("smol-cpu",), batches=(1, 32))
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INSTRUCTION = "Represent this user for predicting fund purchases in the next 30 days."
BACKENDS = ("pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8")
# DESIGN §8 targets on 2 CPU cores.
TARGET_FP32_VS_PYTORCH = 1.3
TARGET_GEMM_RATIO = 0.6
TARGET_INT8_VS_FP32 = 2.0


# ----- measuring --------------------------------------------------------------------------------------------


def compare_embeddings(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How close two (N, E) embedding matrices of the same users are: row cosines and the largest difference.

    The hook for comparing variants (int8 vs fp32, GPU vs CPU); probe-AUC parity belongs to the evaluation.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-12)
    return {
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def backbone_flops(llm_config: dict[str, Any], attention_mask: np.ndarray) -> float:
    """FLOPs of the decoder for a batch, counted on the real (unpadded) tokens of each row.

    Per layer and real token: 2·(q, k, v, o and gate, up, down projection MACs); per layer and row of n real
    tokens: 2·2·heads·n²·head_dim for the attention scores and the weighted values. The last layer's MLP runs
    on the `<USER>` row alone (`InstructUEModel.forward`): one token per row there.
    """
    hidden = llm_config["hidden_size"]
    heads = llm_config["num_attention_heads"]
    kv_heads = llm_config.get("num_key_value_heads") or heads
    head_dim = llm_config.get("head_dim") or hidden // heads
    layers = llm_config["num_hidden_layers"]
    inner = llm_config["intermediate_size"]
    attention_macs = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp_macs = 3 * hidden * inner
    lengths = attention_mask.sum(1).astype(np.float64)
    tokens, rows = lengths.sum(), len(lengths)
    linear = 2.0 * (layers * attention_macs * tokens + mlp_macs * ((layers - 1) * tokens + rows))
    attention = 4.0 * heads * head_dim * (lengths**2).sum()
    return float(linear + layers * attention)


class GemmProbe:
    """This machine's fp32 GEMM rate (GFLOP/s): size x size by size x size with torch, numpy and onnxruntime.

    Built once, measured in every benchmark cycle, so the backbone is compared with a GEMM run under the same
    conditions (a busy neighbour slows both).
    """

    def __init__(self, *, size: int = 2048) -> None:
        import onnxruntime as ort
        import torch
        from onnx import TensorProto, helper, numpy_helper

        from instructue_plugin.onnx_runtime import session_options

        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        w = rng.standard_normal((size, size), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, size])],
            [numpy_helper.from_array(w, "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        at, wt = torch.from_numpy(a), torch.from_numpy(w)
        self.size = size
        self.flop = 2.0 * size**3
        self.calls: dict[str, Callable[[], Any]] = {
            "torch": lambda: torch.matmul(at, wt),
            "numpy": lambda: a @ w,
            "onnxruntime": lambda: session.run(None, {"a": a}),
        }
        self.samples: list[dict[str, float]] = []

    def measure(self, *, seconds: float = 0.6) -> dict[str, float]:
        """One sample: each library's rate over about `seconds` (at least 2 products each), plus the best."""
        rates = {}
        for name, call in self.calls.items():
            call()
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or count < 2:
                call()
                count += 1
            rates[f"{name}_gflops"] = self.flop * count / elapsed / 1e9
        rates["best_gflops"] = max(rates.values())
        self.samples.append(rates)
        return rates

    def summary(self) -> dict[str, float]:
        """Median and maximum over the samples of each rate."""
        out: dict[str, float] = {"size": self.size, "samples": len(self.samples)}
        for key in self.samples[0]:
            values = [sample[key] for sample in self.samples]
            out[key] = statistics.median(values)
            out[f"max_{key}"] = max(values)
        return out


def _timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


def _stats(seconds: list[float], users: int) -> dict[str, float]:
    median = statistics.median(seconds)
    return {
        "ms_median": 1e3 * median,
        "ms_min": 1e3 * min(seconds),
        "users_per_s": users / median,
        "repeats": len(seconds),
    }


# ----- one preset -------------------------------------------------------------------------------------------


def bench_preset(
    preset: str,
    *,
    batches: Sequence[int],
    gemm: GemmProbe,
    min_seconds: float = 3.0,
    cycles: int = 4,
    seed: int = 0,
    int8_keep_fp32: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export one preset's model and time the three backends at each batch size (see the module docstring)."""
    from instructue_plugin.config import config_for_preset
    from instructue_plugin.embedder import TorchEmbedder
    from instructue_plugin.manifest import USER_GRAPH_FILE
    from instructue_plugin.model import InstructUEModel
    from instructue_plugin.onnx_export import export_model
    from instructue_plugin.onnx_runtime import OnnxEmbedder, clear_session_cache

    say = progress or (lambda message: logger.info("%s", message))
    result: dict[str, Any] = {"batches": {}}
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as scratch:
        say(f"{preset}: building the model")
        model = InstructUEModel.create(config_for_preset(preset)).eval()
        model.save_pretrained(Path(scratch) / "model")
        started = time.perf_counter()
        export = export_model(
            Path(scratch) / "model", Path(scratch) / "export", int8=True, int8_keep_fp32=int8_keep_fp32, progress=say
        )
        result["export_seconds"] = round(time.perf_counter() - started, 1)
        manifest = json.loads((export / "manifest.json").read_text())
        result["exporter"] = manifest["exporter"]["name"]
        result["export_parity"] = manifest["parity"]
        embedders = {
            "pytorch_eager": TorchEmbedder(model.merge_lora()),  # served as a trained folder is: LoRA merged
            "onnxruntime_fp32": OnnxEmbedder.from_export(export, providers=["CPUExecutionProvider"]),
            "onnxruntime_int8": OnnxEmbedder.from_export(export, variant="int8"),
        }
        llm_config = dict(model.llm_config)
        result["llm"] = {
            k: llm_config.get(k)
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
        for batch in batches:
            say(f"{preset}, batch {batch}: timing {', '.join(embedders)}")
            entry = _bench_batch(embedders, llm_config, batch, gemm, min_seconds, cycles, seed)
            result["batches"][str(batch)] = entry
        say(f"{preset}, batch {max(batches)}: operator profiles")
        largest = _batch_arrays(embedders["onnxruntime_fp32"], _batch_rows(max(batches), seed))
        result["batches"][str(max(batches))]["operator_shares"] = operator_shares(
            embedders["pytorch_eager"], export / USER_GRAPH_FILE, largest
        )
        del embedders, model
        clear_session_cache()
    return result


def _bench_batch(
    embedders: dict[str, Any],
    llm_config: dict[str, Any],
    batch: int,
    gemm: GemmProbe,
    min_seconds: float,
    cycles: int,
    seed: int,
) -> dict[str, Any]:
    """Time every backend on one batch of `batch` users.

    Each cycle measures the GEMM rate, then each backend in a block of repeats after a short pause: blocks, not
    call-by-call alternation, because torch's OpenMP and onnxruntime's threads keep spinning for a while after a
    call and would slow whichever backend runs next.
    """
    rows = _batch_rows(batch, seed)
    arrays = _batch_arrays(embedders["onnxruntime_fp32"], rows)
    flops = backbone_flops(llm_config, arrays["attention_mask"])
    outputs = {name: e.embed(rows, INSTRUCTION, batch_size=batch) for name, e in embedders.items()}  # warm
    first = max(_timed(e._run_user_graph, arrays) for e in embedders.values())
    repeats = max(2, min(20, math.ceil(min_seconds / cycles / first)))
    graph_times: dict[str, list[float]] = {name: [] for name in embedders}
    embed_times: dict[str, list[float]] = {name: [] for name in embedders}
    embed_by_cycle: dict[str, list[float]] = {name: [] for name in embedders}  # median seconds per cycle
    gemm_rates = []
    for _ in range(cycles):
        gemm_rates.append(gemm.measure()["best_gflops"])
        for name, embedder in embedders.items():
            time.sleep(0.3)  # let the previous backend's spinning threads go to sleep
            graph_times[name] += [_timed(embedder._run_user_graph, arrays) for _ in range(repeats)]
            block = [_timed(embedder.embed, rows, INSTRUCTION, batch_size=batch) for _ in range(repeats)]
            embed_times[name] += block
            embed_by_cycle[name].append(statistics.median(block))
    gemm_median = statistics.median(gemm_rates)
    entry: dict[str, Any] = {
        "shape": list(arrays["input_ids"].shape),
        "item_table_rows": int(arrays["item_vectors"].shape[0]),
        "real_tokens_per_user": float(arrays["attention_mask"].sum() / batch),
        "backbone_gflop_per_user": flops / batch / 1e9,
        "gemm_gflops_median": gemm_median,
    }
    for name in embedders:
        graph = _stats(graph_times[name], batch)
        achieved = flops / (graph["ms_median"] / 1e3) / 1e9
        entry[name] = {
            "graph": graph,
            "embed": _stats(embed_times[name], batch),
            "backbone_gflops": achieved,
            "gemm_ratio": achieved / gemm_median,
        }
    eager, fp32, int8 = (entry[name]["embed"]["users_per_s"] for name in BACKENDS)
    entry["speedup"] = {"fp32_vs_pytorch": fp32 / eager, "int8_vs_fp32": int8 / fp32}
    entry["speedup_by_cycle"] = {
        "fp32_vs_pytorch": speedups_by_cycle(embed_by_cycle["pytorch_eager"], embed_by_cycle["onnxruntime_fp32"]),
        "int8_vs_fp32": speedups_by_cycle(embed_by_cycle["onnxruntime_fp32"], embed_by_cycle["onnxruntime_int8"]),
    }
    entry["int8_vs_fp32"] = compare_embeddings(outputs["onnxruntime_int8"], outputs["onnxruntime_fp32"])
    entry["fp32_vs_pytorch"] = compare_embeddings(outputs["onnxruntime_fp32"], outputs["pytorch_eager"])
    return entry


def speedups_by_cycle(baseline_seconds: Sequence[float], faster_seconds: Sequence[float]) -> list[float]:
    """Throughput ratio of `faster` over `baseline` in each cycle (each from the cycle's median time per call)."""
    return [slow / fast for slow, fast in zip(baseline_seconds, faster_seconds, strict=True)]


def _batch_rows(batch: int, seed: int) -> dict[str, list]:
    """The benchmark's `batch` example users (Feast-shaped rows)."""
    from instructue_plugin.example_inputs import example_feature_rows

    return example_feature_rows(batch, seed=seed + batch)


def _batch_arrays(reference: Any, rows: dict[str, list]) -> dict[str, np.ndarray]:
    """The user graph's input arrays for `rows` under the benchmark's instruction, laid out by `reference`."""
    from instructue_plugin.featurize import featurize

    users = featurize(rows, max_items_per_source=reference.config.max_items_per_source)
    inputs = reference.builder.build(users, [INSTRUCTION] * len(users))
    return inputs.graph_inputs(reference.item_vectors(inputs.item_texts))


def operator_shares(
    eager: Any, graph_path: Path, arrays: dict[str, np.ndarray], *, runs: int = 3, top: int = 8
) -> dict[str, dict[str, float]]:
    """Share of each backend's graph time per operator type (the `top` largest, the rest as "other").

    PyTorch: the profiler's self CPU time per aten operator. onnxruntime: its profiling's kernel time per node
    type (a fused node counts under its fused type, e.g. `FusedMatMul`).
    """
    import onnxruntime as ort
    import torch

    from instructue_plugin.onnx_runtime import session_options

    eager._run_user_graph(arrays)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(runs):
            eager._run_user_graph(arrays)
    torch_times = {e.key: e.self_cpu_time_total for e in profiler.key_averages()}

    with tempfile.TemporaryDirectory(prefix="ort-profile-") as scratch:
        options = session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: arrays[i.name] for i in session.get_inputs()}
        for _ in range(runs + 1):  # the first run is the warm-up: dropped below
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernel_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    warm_up_end = len(kernel_events) // (runs + 1)
    ort_times: dict[str, float] = {}
    for event in kernel_events[warm_up_end:]:
        op = event["args"]["op_name"]
        ort_times[op] = ort_times.get(op, 0.0) + event["dur"]
    return {"pytorch_eager": _shares(torch_times, top), "onnxruntime_fp32": _shares(ort_times, top)}


def _shares(times: dict[str, float], top: int) -> dict[str, float]:
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda item: -item[1])
    shares = {name: round(value / total, 4) for name, value in ranked[:top]}
    shares["other"] = round(sum(value for _, value in ranked[top:]) / total, 4)
    return shares


# ----- the benchmark ----------------------------------------------------------------------------------------


def run(
    *,
    presets: Sequence[str] = ("smol-cpu", "smol"),
    batches: Sequence[int] = (1, 32),
    report_path: str | Path = Path("reports/bench-embed.json"),
    min_seconds: float = 8.0,
    cycles: int = 4,
    int8_keep_fp32: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time PyTorch eager, onnxruntime fp32 and onnxruntime int8 embedding on this CPU; write the report.

    Args:
        presets: model presets to measure; `smol` (the full 30-layer backbone, ~26 GFLOP per user) is slow on a
            CPU, leave it out with `presets=("smol-cpu",)`.
        batches: users per call.
        report_path: where the JSON report is written.
        min_seconds: time budget per batch and backend that sets the number of repeats (2 to 20 per cycle).
        cycles: measurement cycles per batch (GEMM rate, then each backend in a block).
        int8_keep_fp32: projections the int8 variant keeps in fp32 (as `export_model`'s `int8_keep_fp32`;
            None: the export's default).
        progress: called with a short message at each step.

    Returns:
        The report: machine, GEMM rates, per preset and batch the latencies, users/s, achieved backbone GFLOP/s
        and its ratio to the GEMM rate, speed-ups and the DESIGN §8 targets.
    """
    import torch

    from instructue_plugin.onnx_int8 import DEFAULT_KEEP_FP32
    from instructue_plugin.onnx_runtime import cpu_threads

    if int8_keep_fp32 is None:
        int8_keep_fp32 = DEFAULT_KEEP_FP32
    say = progress or (lambda message: logger.info("%s", message))
    gemm = GemmProbe()
    report: dict[str, Any] = {
        "machine": {
            "cpus": cpu_threads(),
            "processor": _cpu_model(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            # Other processes' load: OpenMP (torch) suffers most when a core is taken from it mid-operator.
            "load_average_1min_at_start": os.getloadavg()[0],
        },
        "instruction": INSTRUCTION,
        "int8_keep_fp32": list(int8_keep_fp32),
        "presets": {},
    }
    for preset in presets:
        report["presets"][preset] = bench_preset(
            preset,
            batches=batches,
            gemm=gemm,
            min_seconds=min_seconds,
            cycles=cycles,
            int8_keep_fp32=int8_keep_fp32,
            progress=say,
        )
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    if not gemm.samples:
        gemm.measure()
    report["gemm"] = gemm.summary()
    report["targets"] = _targets(report)
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    say(f"wrote {path}")
    return report


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """DESIGN §8 CPU targets on the first preset and its largest batch."""
    if not report["presets"]:
        return {}
    preset, result = next(iter(report["presets"].items()))
    batch = max(result["batches"], key=int)
    entry = result["batches"][batch]
    by_cycle = entry.get("speedup_by_cycle", {})
    values = {  # name -> (value, its value in each cycle where measured so, target)
        "onnxruntime_fp32_vs_pytorch_eager": (
            entry["speedup"]["fp32_vs_pytorch"],
            by_cycle.get("fp32_vs_pytorch"),
            TARGET_FP32_VS_PYTORCH,
        ),
        "backbone_share_of_gemm_rate": (entry["onnxruntime_fp32"]["gemm_ratio"], None, TARGET_GEMM_RATIO),
        "onnxruntime_int8_vs_fp32": (
            entry["speedup"]["int8_vs_fp32"],
            by_cycle.get("int8_vs_fp32"),
            TARGET_INT8_VS_FP32,
        ),
    }
    targets = {}
    for name, (value, cycles, target) in values.items():
        targets[name] = {"preset": preset, "batch": int(batch), "value": float(value), "target": target}
        targets[name]["met"] = value >= target
        if cycles:
            targets[name] |= {"cycles_met": sum(ratio >= target for ratio in cycles), "cycles": len(cycles)}
    return targets


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or os.uname().machine


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (the CLI prints it)."""
    lines = [
        f"fp32 GEMM 2048³, median of {report['gemm']['samples']} samples: torch {report['gemm']['torch_gflops']:.1f}, "
        f"numpy {report['gemm']['numpy_gflops']:.1f}, onnxruntime {report['gemm']['onnxruntime_gflops']:.1f} GFLOP/s "
        f"(best {report['gemm']['best_gflops']:.1f}, max seen {report['gemm']['max_best_gflops']:.1f})",
        f"{'preset':10} {'batch':>5} {'backend':18} {'users/s':>8} {'ms/batch':>9} {'graph ms':>9} "
        f"{'GFLOP/s':>8} {'of GEMM':>8}",
    ]
    for preset, result in report["presets"].items():
        for batch, entry in result["batches"].items():
            for name in BACKENDS:
                row = entry[name]
                lines.append(
                    f"{preset:10} {batch:>5} {name:18} {row['embed']['users_per_s']:8.1f} "
                    f"{row['embed']['ms_median']:9.1f} {row['graph']['ms_median']:9.1f} "
                    f"{row['backbone_gflops']:8.1f} {row['gemm_ratio']:8.0%}"
                )
            speed, cycles = entry["speedup"], entry["speedup_by_cycle"]
            lines.append(
                f"{'':10} {'':>5} fp32/eager {speed['fp32_vs_pytorch']:.2f}x ({_spread(cycles['fp32_vs_pytorch'])} "
                f"per cycle), int8/fp32 {speed['int8_vs_fp32']:.2f}x ({_spread(cycles['int8_vs_fp32'])}), "
                f"int8 min cosine {entry['int8_vs_fp32']['min_cosine']:.4f}, "
                f"{entry['backbone_gflop_per_user']:.2f} GFLOP/user"
            )
            for backend, shares in entry.get("operator_shares", {}).items():
                listed = ", ".join(f"{op} {share:.0%}" for op, share in shares.items())
                lines.append(f"{'':10} {'':>5} {backend} time by operator: {listed}")
    for name, target in report.get("targets", {}).items():
        cycles = f" (in {target['cycles_met']} of {target['cycles']} cycles)" if "cycles" in target else ""
        lines.append(
            f"target {name}: {target['value']:.2f} vs {target['target']} -> "
            f"{'met' if target['met'] else 'MISSED'}{cycles}"
        )
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x"
