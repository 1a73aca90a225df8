"""The functions Feast's embedding views call, and the model they share in one process.

`feast_repo/embeddings.py` declares the on-read view `user_embedding`; its body is one import and one call to
`embed_on_read`. Feast rebuilds an ODFV from its source text in a bare namespace, so everything the view
needs lives here, not in the repo module.

`embed_on_read(inputs)` receives Feast's batch python-mode input, a dict of lists with one entry per row:
`user_id`, the six views' feature columns (short names and `<view>__<column>`), and the request field
`instruction`. It returns `{"embedding": [...]}`, one list of floats per row, or None
where the user has no data (an unknown user): that row reads as a null feature, the other rows are unaffected.
A user whose stored features are malformed (e.g. list columns of one source with different lengths) gets a
null too, with an error log naming the user (`embed_valid_rows`); `instructue materialize` does the same.

- `feast apply` calls the function once with fake inputs (strings "hello world", no join key) to check the
  output schema. Those inputs are recognised by the missing `user_id` column and answered with a placeholder
  vector without loading a model, so the repo applies with no model present.
- The model is loaded on the first real read from `settings.model_dir()` (INSTRUCTUE_MODEL), once per process
  and folder, under a lock; a missing model raises `ModelNotFoundError` naming INSTRUCTUE_MODEL.
- An empty or null instruction means the general embedding. An instruction longer than the model's budget
  (`max_instruction_tokens`) is cut to its first tokens by the runtime, which logs a warning once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import model_files_stamp, schema, settings
from .embedder import normalize_instructions
from .errors import DataValidationError, ModelNotFoundError
from .featurize import featurize, short_column_names

if TYPE_CHECKING:
    from .embedder import Embedder

logger = logging.getLogger(__name__)

EMBEDDING_FEATURE = "embedding"
INSTRUCTION_FIELD = "instruction"
# The value Feast's schema inference gives a String request field (feast 0.67 `_construct_random_input`).
_FEAST_SAMPLE_STRING = "hello world"
# What the schema-inference call gets back: a non-empty float list, enough to infer Array(Float32).
_PLACEHOLDER = [0.0]

# (folder, variant) -> (the model files' stamp when loaded, embedder): a model re-saved or re-exported into the
# same folder changes the stamp, and the next read loads it.
_embedders: dict[tuple[Path, str], tuple[tuple, Embedder]] = {}
_lock = threading.Lock()


def load_embedder(model_path: str | Path | None = None) -> Embedder:
    """The embedder of `model_path` (default: `settings.model_dir()`), loaded once per process, folder and variant
    (INSTRUCTUE_MODEL_VARIANT), and loaded again when the model in the folder is replaced.

    Raises:
        ModelNotFoundError: nothing at the folder; the message names INSTRUCTUE_MODEL and the fix.
        CorruptModelError, SchemaMismatchError: as `instructue_plugin.load`.
    """
    folder = Path(model_path).expanduser().resolve() if model_path is not None else settings.model_dir()
    key = (folder, settings.model_variant())
    stamp = model_files_stamp(folder)
    cached = _embedders.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with _lock:
        cached = _embedders.get(key)
        if cached is None or cached[0] != stamp:  # another thread may have loaded it while this one waited
            if not folder.exists():
                raise ModelNotFoundError(
                    f"no InstructUE model at {folder} (the folder named by INSTRUCTUE_MODEL, default "
                    f"{settings.DEFAULT_MODEL_DIR}); set INSTRUCTUE_MODEL to a trained model folder "
                    "(`instructue train`) or an export folder (`instructue export`) in the environment of the "
                    "process that reads the embedding features"
                )
            import instructue_plugin

            logger.info("loading the InstructUE model from %s", folder)
            _embedders[key] = (stamp, instructue_plugin.load(folder, variant=key[1]))
        return _embedders[key][1]


def embed_on_read(inputs: Mapping[str, Sequence[Any]]) -> dict[str, list[list[float] | None]]:
    """Body of the `user_embedding` on-demand view: one embedding per input row (None for unknown users).

    Args:
        inputs: Feast's batch python-mode input: a dict of equal-length lists.

    Returns:
        `{"embedding": [...]}`: float lists of the model's dimension, or None for rows with no data.

    Raises:
        ModelNotFoundError: no model at INSTRUCTUE_MODEL (first read only).
        DataValidationError: the input has no `user_id` column and is not Feast's schema-inference call.
    """
    rows = _row_count(inputs)
    if schema.ENTITY_KEY not in inputs:
        if _is_schema_inference(inputs):
            return {EMBEDDING_FEATURE: [list(_PLACEHOLDER) for _ in range(rows)]}
        raise DataValidationError(
            f"user_embedding got rows without a {schema.ENTITY_KEY!r} column (columns: {sorted(inputs)[:8]}...); "
            f"read it with entity rows that carry {schema.ENTITY_KEY!r}"
        )
    features = feature_columns(inputs)
    instructions = [_instruction(v) for v in inputs[INSTRUCTION_FIELD]] if INSTRUCTION_FIELD in inputs else None
    vectors = embed_valid_rows(load_embedder(), features, instructions, user_ids=list(inputs[schema.ENTITY_KEY]))
    return {EMBEDDING_FEATURE: to_feature_values(vectors)}


def embed_valid_rows(
    embedder: Embedder,
    features: dict[str, list[Any]],
    instruction: str | list[str | None] | None,
    *,
    user_ids: Sequence[Any],
) -> np.ndarray:
    """`embedder.embed`, except that a user whose feature row is malformed gets a NaN row (a null feature) and an
    error log naming the user, instead of failing every user of the call.

    Raises:
        DataValidationError: bad instructions, or no row of the call is well formed (the first one's user named).
    """
    instructions = normalize_instructions(instruction, len(user_ids))
    try:
        return embedder.embed(features, instructions)
    except DataValidationError as error:
        whole = error
    good, failures = [], []
    for row, user in enumerate(user_ids):
        try:
            featurize(_rows(features, [row]), max_items_per_source=embedder.config.max_items_per_source)
            good.append(row)
        except DataValidationError as error:
            failures.append(f"user {user}: {error}")
    if not failures:
        raise whole  # not a row's fault
    if not good:
        raise DataValidationError(f"no row has well-formed features; {failures[0]}") from whole
    for failure in failures:
        logger.error("malformed features, embedding null for %s", failure)
    out = np.full((len(user_ids), embedder.dim), np.nan, dtype=np.float32)
    out[good] = embedder.embed(_rows(features, good), [instructions[i] for i in good])
    return out


def _rows(features: Mapping[str, Sequence[Any]], rows: list[int]) -> dict[str, list[Any]]:
    """Rows `rows` of a dict of columns."""
    return {name: [column[i] for i in rows] for name, column in features.items()}


def feature_columns(inputs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The six views' columns of a Feast input under their short names (full `<view>__<column>` accepted)."""
    short = short_column_names(inputs)
    return {column: list(short[column]) for column in schema.feature_columns() if column in short}


def to_feature_values(vectors: np.ndarray) -> list[list[float] | None]:
    """(rows, dim) float32 embeddings as Feast values: float lists, None for NaN rows (users with no data)."""
    missing = np.isnan(vectors).any(axis=1)
    return [None if missing[i] else vectors[i].tolist() for i in range(len(vectors))]


def _instruction(value: Any) -> str | None:
    """An instruction value as the embedder takes it: null (None, or NaN from a pandas entity frame) is None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _row_count(inputs: Mapping[str, Sequence[Any]]) -> int:
    lengths = {len(values) for values in inputs.values() if isinstance(values, list | tuple | np.ndarray)}
    if len(lengths) > 1:
        raise DataValidationError(f"user_embedding got columns of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _is_schema_inference(inputs: Mapping[str, Sequence[Any]]) -> bool:
    """Feast's apply-time call: no join key, and the request field holds Feast's sample string."""
    values = list(inputs[INSTRUCTION_FIELD]) if INSTRUCTION_FIELD in inputs else []
    return len(values) > 0 and all(value == _FEAST_SAMPLE_STRING for value in values)
