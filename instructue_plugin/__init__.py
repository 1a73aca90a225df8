"""InstructUE for Feast: instruction-aware user embeddings from an LLM, served as Feast features.

Importing this package is cheap: torch, transformers and onnxruntime load only when a model is used.

    import instructue_plugin
    embedder = instructue_plugin.load("models/demo/export")  # a trained model folder or an ONNX export
    vectors = embedder.embed(feature_frame, instruction="Represent this user for predicting fund purchases")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .embedder import Embedder

EXPORT_MANIFEST = "manifest.json"


def model_identity_files(folder: Path) -> list[Path]:
    """The files whose content identifies a model folder: an export's manifest (it lists every file's sha256),
    else a trained folder's config and weights."""
    if (folder / EXPORT_MANIFEST).exists():
        return [folder / EXPORT_MANIFEST]
    return [folder / "config.json", folder / "model.safetensors"]


def model_files_stamp(folder: Path) -> tuple:
    """Size and modification time of the files that identify the model in `folder` (cheap to read per call):
    it changes when they are rewritten or replaced."""
    stamp = []
    for file in model_identity_files(folder):
        try:
            status = file.stat()
        except OSError:
            stamp.append((file.name, None))
        else:
            stamp.append((file.name, status.st_size, status.st_mtime_ns))
    return tuple(stamp)


def load(path: str | Path, *, variant: str | None = None) -> Embedder:
    """Load an embedder from a trained model folder (PyTorch) or an export folder (onnxruntime).

    Args:
        path: the folder.
        variant: for an export folder, "fp32" or "int8"; default `INSTRUCTUE_MODEL_VARIANT`, else "fp32".

    Raises:
        ModelNotFoundError: nothing at `path`.
        CorruptModelError: the folder is incomplete, tampered with or unreadable.
        SchemaMismatchError: the model was made with other feature definitions.
        ConfigError: an unknown variant, int8 asked of an export without it or of a PyTorch model folder.
    """
    from . import settings
    from .errors import ConfigError, ModelNotFoundError

    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(
            f"no model at {folder}; train one (`instructue train`), export it (`instructue export`) "
            "or point INSTRUCTUE_MODEL at one"
        )
    variant = (variant or settings.model_variant()).strip().lower()  # as INSTRUCTUE_MODEL_VARIANT is read
    if (folder / EXPORT_MANIFEST).exists():
        from .onnx_runtime import OnnxEmbedder

        return OnnxEmbedder.from_export(folder, variant=variant)
    if variant != "fp32":
        raise ConfigError(
            f"variant {variant!r} (INSTRUCTUE_MODEL_VARIANT) needs an export folder; {folder} is a PyTorch model "
            "folder: export it with `instructue export --int8`"
        )
    from .embedder import TorchEmbedder

    return TorchEmbedder.from_pretrained(folder)
