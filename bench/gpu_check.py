"""GPU check of the ONNX runtime: export a `smol` model, run it with TensorRT (fp16) and CUDA, check and time it.

Steps: build the preset's model (untrained weights: speed and parity do not depend on them), export it (fp32),
embed the same realistic rows on CPU (the reference), CUDA and TensorRT, require a cosine >= 0.999 per embedding
against the CPU, then measure users/s of the user graph at each batch size and the achieved backbone TFLOP/s
against the card's dense fp16 peak. Prints a table and writes `gpu-check.json` into --out.

Run it through `bench/gpu_check.sh`; with no usable NVIDIA GPU it prints `SKIP: ...` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTRUCTION = "Represent this user for predicting fund purchases in the next 30 days."
MIN_COSINE = 0.999
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) by the name nvidia-smi prints.
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown NVIDIA GPU"


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS.items():  # H200 before H100 before A100 ...: first match wins
        if key in name:
            return value
    return None


def throughput(embedder: Any, arrays: dict, *, seconds: float) -> tuple[float, float]:
    """(median seconds per graph call, calls made) over about `seconds`, after two warm-up calls."""
    import statistics

    embedder._run_user_graph(arrays)
    embedder._run_user_graph(arrays)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        embedder._run_user_graph(arrays)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


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
    if not has_gpu or "CUDAExecutionProvider" not in available:
        reason = why if not has_gpu else f"this onnxruntime ({ort.__version__}) has no CUDA provider: {available}"
        print(f"SKIP: {reason}")
        report_path.write_text(json.dumps({"skipped": reason}, indent=2))
        return 0

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
        reference = cpu.embed(rows, INSTRUCTION, batch_size=32)
        plans = {"cuda_fp32": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        trt_missing = load_tensorrt()
        if trt_missing is None and "TensorrtExecutionProvider" in available:
            plans = {
                "tensorrt_fp16": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                **plans,
            }
        else:
            report["providers"]["tensorrt_fp16"] = {"skipped": trt_missing or "onnxruntime has no TensorRT provider"}
            print(f"TensorRT skipped: {report['providers']['tensorrt_fp16']['skipped']}")

        for label, providers in plans.items():
            start = time.perf_counter()
            embedder = OnnxEmbedder.from_export(export, providers=providers, trt_cache_dir=Path(scratch) / "trt")
            out = embedder.embed(rows, INSTRUCTION, batch_size=32)  # TensorRT builds its engine here
            entry: dict[str, Any] = {
                "providers": embedder.providers,
                "first_embed_seconds": round(time.perf_counter() - start, 1),
                "vs_cpu_fp32": compare_embeddings(out, reference),
                "batches": {},
            }
            entry["parity_ok"] = entry["vs_cpu_fp32"]["min_cosine"] >= MIN_COSINE
            for batch in batches:
                users = featurize(
                    {k: v[:batch] for k, v in rows.items()}, max_items_per_source=config.max_items_per_source
                )
                inputs = embedder.builder.build(users, [INSTRUCTION] * batch)
                arrays = inputs.graph_inputs(embedder.item_vectors(inputs.item_texts))
                median, calls = throughput(embedder, arrays, seconds=args.seconds)
                flops = backbone_flops(llm_config, arrays["attention_mask"])
                tflops = flops / median / 1e12
                entry["batches"][str(batch)] = {
                    "ms_median": 1e3 * median,
                    "users_per_s": batch / median,
                    "calls": calls,
                    "backbone_tflops": tflops,
                    "share_of_peak": tflops / report["peak_fp16_tflops"] if report["peak_fp16_tflops"] else None,
                }
            report["providers"][label] = entry
            del embedder

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report_path.write_text(json.dumps(report, indent=2))
    print(f"\n{name} (peak fp16 dense {report['peak_fp16_tflops']} TFLOP/s), preset {args.preset}")
    print(f"{'provider':14} {'parity':>14} {'batch':>5} {'users/s':>9} {'ms':>8} {'TFLOP/s':>8} {'of peak':>8}")
    failed = False
    for label, entry in report["providers"].items():
        if "skipped" in entry:
            print(f"{label:14} skipped: {entry['skipped']}")
            continue
        failed |= not entry["parity_ok"]
        parity = f"cos {entry['vs_cpu_fp32']['min_cosine']:.5f}" + ("" if entry["parity_ok"] else " FAIL")
        for batch, row in entry["batches"].items():
            share = f"{row['share_of_peak']:8.1%}" if row["share_of_peak"] is not None else f"{'?':>8}"
            print(
                f"{label:14} {parity:>14} {batch:>5} {row['users_per_s']:9.1f} {row['ms_median']:8.2f} "
                f"{row['backbone_tflops']:8.2f} {share}"
            )
    print(f"wrote {report_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
