"""The one module that reads the environment.

- `INSTRUCTUE_DATA`: the data folder (holding `snapshots/`) that `feast_repo/` points its sources at when it
  is applied. Default: `data/demo` in the project checkout (what `instructue demo` writes).
- `INSTRUCTUE_MODEL`: the trained model or export folder the runtime loads when it first embeds.
  Default: `models/demo/export` in the project checkout.
- `INSTRUCTUE_MODEL_VARIANT`: which graph of an export folder the runtime serves, `fp32` or `int8` (an export made
  with `--int8`). Default: `fp32`.
- `INSTRUCTUE_CACHE`: where converted backbones and other derived files are cached.
  Default: `~/.cache/instructue`.

Everything else receives paths as arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "demo"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "demo" / "export"


def data_dir() -> Path:
    """The data folder named by `INSTRUCTUE_DATA`, else the demo default."""
    return Path(os.environ.get("INSTRUCTUE_DATA") or DEFAULT_DATA_DIR).expanduser().resolve()


def model_dir() -> Path:
    """The model or export folder named by `INSTRUCTUE_MODEL`, else the demo default."""
    return Path(os.environ.get("INSTRUCTUE_MODEL") or DEFAULT_MODEL_DIR).expanduser().resolve()


def model_variant() -> str:
    """The export variant named by `INSTRUCTUE_MODEL_VARIANT`, else "fp32" (checked where it is used)."""
    return (os.environ.get("INSTRUCTUE_MODEL_VARIANT") or "fp32").strip().lower()


def cache_dir() -> Path:
    """The cache folder named by `INSTRUCTUE_CACHE`, else `~/.cache/instructue`."""
    default = Path.home() / ".cache" / "instructue"
    return Path(os.environ.get("INSTRUCTUE_CACHE") or default).expanduser().resolve()
