"""The parts of the GPU check script (`bench/gpu_check.py`) that run on a machine without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from instructue_plugin.onnx_runtime import gpu_status

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Dense fp16 tensor-core TFLOP/s from NVIDIA's data sheets (their sparsity figures halved).
@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("Tesla T4", 65.0),
        ("NVIDIA A10G", None),  # not in the table: no "of peak" figure rather than the A10's
        ("unknown NVIDIA GPU", None),
    ],
)
def test_a_cards_peak_is_read_from_its_whole_model_name(name, peak):
    assert _gpu_check_module().peak_tflops(name) == peak


def test_without_a_gpu_the_check_skips_and_says_why(tmp_path):
    has_gpu, _ = gpu_status()
    if has_gpu:
        pytest.skip("this machine has a GPU: the check runs instead of skipping")
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIP: ")
    assert json.loads((tmp_path / "gpu-check.json").read_text())["skipped"] in result.stdout
