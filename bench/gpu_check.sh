#!/usr/bin/env bash
# GPU check of the ONNX runtime (issue 5): smol export -> TensorRT fp16 and CUDA sessions, parity vs CPU, users/s.
#
#   bash bench/gpu_check.sh          # on a machine with an NVIDIA GPU and the project installed (make install)
#
# Writes gpu-check.json into $OUT when set (the device tool's output folder), else into reports/.
# Installs nothing beyond the repo's install, except TensorRT 10 for CUDA 13 when pip can get it
# (onnxruntime-gpu 1.31 cannot load TensorRT 11). Without a GPU it prints "SKIP: ..." and exits 0; with a GPU
# that it cannot check (the project or onnxruntime's CUDA provider missing) it prints "FAILED: ..." and exits 1.
# Sized for one 10-minute run: the python step is cut at 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
OUT_DIR=${OUT:-reports}

if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
  echo "SKIP: no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidia0)"
  exit 0
fi
if ! "$PY" -c "import onnxruntime, torch, transformers, instructue_plugin"; then
  # A GPU is here, so nothing was checked: a failure, not a skip.
  echo "FAILED: the project is not importable for $PY (see the error above; run make install first)"
  mkdir -p "$OUT_DIR" && echo '{"failed": "the project is not installed"}' > "$OUT_DIR/gpu-check.json"
  exit 1
fi
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
  "$PY" -m pip install --quiet --timeout 20 --retries 0 "tensorrt-cu13>=10.15,<11" >/dev/null 2>&1 \
    || echo "note: tensorrt-cu13 cannot be installed here; the TensorRT rows will be skipped"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

PYTHONUNBUFFERED=1 timeout 540 "$PY" bench/gpu_check.py --out "$OUT_DIR" "$@"
status=$?
if [ "$status" -eq 124 ]; then
  echo "gpu_check.py ran past 9 minutes and was stopped (rerun with --batches 1,32 or --seconds 2)"
fi
exit "$status"
