"""GPU check of the ONNX runtime: export a `smol` model, run it with TensorRT (fp16) and CUDA, check and time it.

Steps: build the preset's model (untrained weights: speed and parity do not depend on them), export it (fp32),
run the user graph on the same realistic rows on CPU (the reference), TensorRT (fp16), CUDA (the fp32 graph) and
CUDA with the graph converted to fp16 (an fp16 path where TensorRT is not installed), require a cosine >= 0.999
per embedding against the CPU, then measure users/s at each batch size and the achieved backbone TFLOP/s
against the card's dense fp16 peak. Prints a table and writes `gpu-check.json` into --out.

Run it through `bench/gpu_check.sh`; with no NVIDIA GPU it prints `SKIP: ...` and exits 0, with a GPU but an
onnxruntime without its CUDA provider `FAILED: ...` and exits 1.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTRUCTION = "Represent this user for predicting fund purchases in the next 30 days."
MIN_COSINE = 0.999
# The provider each row must run on; a session that fell back to another one fails its row.
EXPECTED_PROVIDER = {
    "tensorrt_fp16": "TensorrtExecutionProvider",
    "cuda_fp32": "CUDAExecutionProvider",
    "cuda_fp16": "CUDAExecutionProvider",
}
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) by the name nvidia-smi prints, most specific first:
# whole words, so that "L4" is not read in "L40" nor "H100" in "H100 PCIe".
PEAK_FP16_TFLOPS = (
    (r"\bH200\b", 989.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"\bT4\b", 65.0),
)


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown NVIDIA GPU"


def peak_tflops(name: str) -> float | None:
    """The card's dense fp16 tensor-core peak from its nvidia-smi name; None for a card not in the table."""
    for pattern, value in PEAK_FP16_TFLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return value
    return None


def throughput(run_graph: Callable[[dict], Any], arrays: dict, *, seconds: float) -> tuple[float, float]:
    """(median seconds per graph call, calls made) over about `seconds`, after two warm-up calls."""
    import statistics

    run_graph(arrays)
    run_graph(arrays)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        run_graph(arrays)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def fp16_user_graph(export: Path, out: Path) -> Path:
    """The export's user graph with fp16 weights and activations (fp32 inputs and outputs), for the CUDA provider.

    Nothing is kept in fp32: the exporter wrote the RMSNorms whose inputs overflow fp16 in an overflow-safe form
    (`onnx_export.fp16_safe_rms_norm`).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from instructue_plugin.manifest import USER_GRAPH_FILE

    onnx.save(convert_float_to_float16(onnx.load(export / USER_GRAPH_FILE), keep_io_types=True), out)
    return out


def embedder_runner(
    export: Path, providers: list[str], scratch: str
) -> tuple[Callable[[], list[str]], Callable[[dict], Any]]:
    """The runtime's own session on `providers`: (the providers it uses, read live; its user-graph call)."""
    from instructue_plugin.onnx_runtime import OnnxEmbedder

    embedder = OnnxEmbedder.from_export(export, providers=providers, trt_cache_dir=Path(scratch) / "trt")
    return lambda: embedder.providers, embedder._run_user_graph


def session_runner(graph: Path) -> tuple[Callable[[], list[str]], Callable[[dict], Any]]:
    """A plain CUDA session on a graph file that has the user graph's inputs and output."""
    import onnxruntime as ort

    from instructue_plugin.manifest import USER_OUTPUT

    session = ort.InferenceSession(str(graph), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.get_providers, lambda arrays: session.run([USER_OUTPUT], {n: arrays[n] for n in names})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--preset", default="smol")
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per provider and batch")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "gpu-check.json"

    import onnxruntime as ort

    from instructue_plugin.onnx_runtime import gpu_status, load_tensorrt

    has_gpu, why = gpu_status()
    available = ort.get_available_providers()
    if not has_gpu:
        print(f"SKIP: {why}")
        report_path.write_text(json.dumps({"skipped": why}, indent=2))
        return 0
    if "CUDAExecutionProvider" not in available:  # a GPU, but a CPU-only onnxruntime: nothing can be checked
        reason = f"this onnxruntime ({ort.__version__}) has no CUDA provider: {available}"
        print(f"FAILED: {reason}")
        report_path.write_text(json.dumps({"failed": reason}, indent=2))
        return 1

    from instructue_plugin.config import config_for_preset
    from instructue_plugin.example_inputs import example_feature_rows
    from instructue_plugin.featurize import featurize
    from instructue_plugin.model import InstructUEModel
    from instructue_plugin.onnx_export import export_model
    from instructue_plugin.onnx_runtime import OnnxEmbedder
    from training.bench_embed import backbone_flops, compare_embeddings

    name = gpu_name()
    report: dict[str, Any] = {
        "gpu": name,
        "peak_fp16_tflops": peak_tflops(name),
        "onnxruntime": ort.__version__,
        "preset": args.preset,
        "providers": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        model = InstructUEModel.create(config_for_preset(args.preset)).eval()
        model.save_pretrained(Path(scratch) / "model")
        export = export_model(Path(scratch) / "model", Path(scratch) / "export", progress=print)
        report["export_seconds"] = round(time.perf_counter() - started, 1)
        llm_config, config = dict(model.llm_config), model.config
        del model

        rows = example_feature_rows(max(batches), seed=0)
        cpu = OnnxEmbedder.from_export(export, providers=["CPUExecutionProvider"])
        graph_inputs = {}  # batch -> the user graph's inputs for the first `batch` rows, built once on the CPU
        for batch in batches:
            users = featurize({k: v[:batch] for k, v in rows.items()}, max_items_per_source=config.max_items_per_source)
            inputs = cpu.builder.build(users, [INSTRUCTION] * batch)
            graph_inputs[batch] = inputs.graph_inputs(cpu.item_vectors(inputs.item_texts))
        reference = cpu._run_user_graph(graph_inputs[max(batches)])

        runners: dict[str, Callable[[], tuple[Callable[[], list[str]], Callable[[dict], Any]]]] = {}
        trt_missing = load_tensorrt()
        if trt_missing is None and "TensorrtExecutionProvider" in available:
            runners["tensorrt_fp16"] = lambda: embedder_runner(
                export, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], scratch
            )
        else:
            report["providers"]["tensorrt_fp16"] = {"skipped": trt_missing or "onnxruntime has no TensorRT provider"}
            print(f"TensorRT skipped: {report['providers']['tensorrt_fp16']['skipped']}")
        cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        runners["cuda_fp32"] = lambda: embedder_runner(export, cuda, scratch)
        runners["cuda_fp16"] = lambda: session_runner(fp16_user_graph(export, Path(scratch) / "user_fp16.onnx"))

        for label, make_runner in runners.items():
            start = time.perf_counter()
            try:
                get_providers, run_graph = make_runner()
                out = run_graph(graph_inputs[max(batches)])  # TensorRT builds its engine here
                # Read after the first run: onnxruntime may switch a session to a later provider when the
                # first one fails while running, and the figures would then be that provider's.
                providers = get_providers()
                if providers[0] != EXPECTED_PROVIDER[label]:
                    raise RuntimeError(f"the session runs on {providers[0]}, not {EXPECTED_PROVIDER[label]}")
            except Exception as error:  # one provider failing must not hide the others' figures
                report["providers"][label] = {"failed": f"{type(error).__name__}: {error}"}
                print(f"{label} failed: {type(error).__name__}: {error}")
                report_path.write_text(json.dumps(report, indent=2))
                continue
            entry: dict[str, Any] = {
                "providers": providers,
                "first_run_seconds": round(time.perf_counter() - start, 1),
                "vs_cpu_fp32": compare_embeddings(out, reference),
                "batches": {},
            }
            entry["parity_ok"] = entry["vs_cpu_fp32"]["min_cosine"] >= MIN_COSINE
            for batch in batches:
                arrays = graph_inputs[batch]
                median, calls = throughput(run_graph, arrays, seconds=args.seconds)
                tflops = backbone_flops(llm_config, arrays["attention_mask"]) / median / 1e12
                entry["batches"][str(batch)] = {
                    "ms_median": 1e3 * median,
                    "users_per_s": batch / median,
                    "calls": calls,
                    "backbone_tflops": tflops,
                    "share_of_fp16_peak": tflops / report["peak_fp16_tflops"] if report["peak_fp16_tflops"] else None,
                }
            report["providers"][label] = entry
            report_path.write_text(json.dumps(report, indent=2))  # a run cut short keeps what it measured
            del run_graph

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report_path.write_text(json.dumps(report, indent=2))
    print(f"\n{name} (peak fp16 dense {report['peak_fp16_tflops']} TFLOP/s), preset {args.preset}")
    print(f"{'provider':14} {'parity':>14} {'batch':>5} {'users/s':>9} {'ms':>8} {'TFLOP/s':>8} {'of peak':>8}")
    failed = False
    for label, entry in report["providers"].items():
        if "skipped" in entry or "failed" in entry:
            status = f"skipped: {entry['skipped']}" if "skipped" in entry else f"FAILED: {entry['failed']}"
            print(f"{label:14} {status}")
            failed |= "failed" in entry
            continue
        failed |= not entry["parity_ok"]
        parity = f"cos {entry['vs_cpu_fp32']['min_cosine']:.5f}" + ("" if entry["parity_ok"] else " FAIL")
        for batch, row in entry["batches"].items():
            share = f"{row['share_of_fp16_peak']:8.1%}" if row["share_of_fp16_peak"] is not None else f"{'?':>8}"
            print(
                f"{label:14} {parity:>14} {batch:>5} {row['users_per_s']:9.1f} {row['ms_median']:8.2f} "
                f"{row['backbone_tflops']:8.2f} {share}"
            )
    print(f"wrote {report_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
