"""The manifest of an ONNX export folder: what the folder holds, how it was made, and the hashes that prove it intact.

An export folder (written by `onnx_export.export_model`, read by `onnx_runtime.OnnxEmbedder`):

    manifest.json              format, versions, schema hash, source weights' sha256, config, graphs, parity,
                               fp16-safe norms, hashes
    user_embedding.onnx        the ten graph inputs of `sequence.GRAPH_INPUT_NAMES` -> `user_embedding` (B, E)
    user_embedding.int8.onnx   optional: the same graph with per-channel dynamic int8 weights (CPU variant)
    item_encoder.onnx          input_ids, attention_mask (N, T) -> `item_vector` (N, D), mean-pooled, L2-normalized
    llm_tokenizer.json         the LLM tokenizer with InstructUE's special tokens
    item_tokenizer.json        the item encoder's tokenizer
    item_cache.npy/.json       item vectors of the catalog, precomputed with `item_encoder.onnx`

Reading checks the format, the feature schema hash and the sha256 of every listed file before anything is used.
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import EXPORT_MANIFEST
from .errors import CorruptModelError, ModelNotFoundError, SchemaMismatchError
from .schema import SCHEMA_HASH

MANIFEST_FILE = EXPORT_MANIFEST
EXPORT_FORMAT = "instructue-onnx"
FORMAT_VERSION = 1

USER_GRAPH_FILE = "user_embedding.onnx"
USER_GRAPH_INT8_FILE = "user_embedding.int8.onnx"
ITEM_GRAPH_FILE = "item_encoder.onnx"
# Same names as in a trained model folder (`model.py`), so tokenizers copy over unchanged.
LLM_TOKENIZER_FILE = "llm_tokenizer.json"
ITEM_TOKENIZER_FILE = "item_tokenizer.json"

# Graph outputs. Never `embedding`: that name collides with `aten.embedding` in the exporter (invalid model).
USER_OUTPUT = "user_embedding"
ITEM_OUTPUT = "item_vector"

# Variant name -> (manifest graph key, file).
VARIANTS: dict[str, tuple[str, str]] = {
    "fp32": ("user_embedding", USER_GRAPH_FILE),
    "int8": ("user_embedding_int8", USER_GRAPH_INT8_FILE),
}

REEXPORT_HINT = "re-export it with `instructue export --model MODEL_DIR --out {folder}`"


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (graphs can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file directly in `folder` except the manifest itself, by file name."""
    return {
        path.name: sha256_file(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST_FILE
    }


def write_manifest(folder: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """Write `manifest.json` into `folder`: `payload` plus the format, schema hash and every file's sha256.

    Call it last, once every other file of the export is in place.
    """
    manifest = {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, "schema_hash": SCHEMA_HASH, **payload}
    manifest["files"] = file_hashes(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check an export folder's manifest and the sha256 of every file it lists.

    Args:
        folder: the export folder.

    Returns:
        The manifest payload.

    Raises:
        ModelNotFoundError: nothing at `folder`.
        CorruptModelError: the manifest or a listed file is missing, unreadable or changed since export.
        SchemaMismatchError: the export was made for other feature definitions than this installation's.
    """
    hint = REEXPORT_HINT.format(folder=folder)
    path = folder / MANIFEST_FILE
    if not folder.exists():
        raise ModelNotFoundError(f"no export at {folder}; create one with `instructue export` or set INSTRUCTUE_MODEL")
    if not path.exists():
        raise CorruptModelError(f"{folder} is not an export folder ({MANIFEST_FILE} missing); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptModelError(f"{path} cannot be read ({error}); {hint}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise CorruptModelError(f"{path} does not describe an InstructUE ONNX export; {hint}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptModelError(
            f"{path} has export format version {manifest.get('format_version')}, this installation reads "
            f"version {FORMAT_VERSION}; {hint}"
        )
    if manifest.get("schema_hash") != SCHEMA_HASH:
        raise SchemaMismatchError(
            f"{folder} was exported for feature schema {manifest.get('schema_hash')} but this installation has "
            f"{SCHEMA_HASH}; retrain the model on data with the current feature definitions and export it again"
        )
    files = manifest.get("files")
    needed = (USER_GRAPH_FILE, ITEM_GRAPH_FILE, LLM_TOKENIZER_FILE, ITEM_TOKENIZER_FILE)
    unlisted = [name for name in needed if not isinstance(files, dict) or name not in files]
    if unlisted:
        raise CorruptModelError(f"{path} does not list {', '.join(unlisted)}; {hint}")
    item_dim = manifest.get("item_dim")
    if not isinstance(item_dim, int) or isinstance(item_dim, bool) or item_dim < 1:
        raise CorruptModelError(f"{path} has no valid item_dim (got {item_dim!r}); {hint}")
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise CorruptModelError(f"{file} is listed in {MANIFEST_FILE} but missing; {hint}")
        actual = sha256_file(file)
        if actual != expected:
            raise CorruptModelError(
                f"{file} was changed or damaged after export (sha256 {actual[:12]}… but the manifest "
                f"records {expected[:12]}…); {hint}"
            )
    return manifest
