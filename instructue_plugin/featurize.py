"""From Feast feature rows to per-user behaviour: item texts, item numeric features, the profile vector.

Input is what a Feast read gives: a pandas DataFrame or a dict of lists, one row per user, with the six
feature views' columns (`schema.feature_columns()`, or Feast's full names `<view>__<column>`). Everything here
is a pure function of one row, so online, offline and training paths featurize identically.

Documented fallbacks (each logged once per process):
- a source whose columns are all absent from the input is treated as missing for every row;
- a null or empty list of item times means the user has no items in that source: the source is omitted (items
  in the source's other columns are then an error, not silently dropped);
- a numeric value that is null, NaN or infinite, or so large that its normalized value is not a finite float32,
  becomes the neutral value 0 (profile: the missing flag is set);
- an item whose timestamp is NaN or infinite counts as the oldest of its source (order and recency; when no
  item of the source is timed, recency 1, the scale's end);
- a categorical profile value outside the schema's categories goes to the "other/unknown" slot.
The summary token of a source covers at most the source's `max_items` newest items (what a snapshot row holds).
Errors (`DataValidationError`): rows but no column of any of the six views, some but not all columns of a
source present, a sequence cell that is not a list, list columns of one source with different lengths in a
row, values that cannot be read as numbers, item times too large to be unix seconds (milliseconds?).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataValidationError
from .schema import (
    ITEM_NUMERIC_WIDTH,
    PROFILE,
    RECENCY_SCALE,
    SEQUENCE_SOURCES,
    ItemField,
    ProfileField,
    feature_columns,
    full_feature_names,
)

logger = logging.getLogger(__name__)
# Slots of the per-token numeric vector after the numeric fields (see schema.ITEM_NUMERIC_WIDTH).
RECENCY_SLOT, COUNT_SLOT, SUMMARY_FLAG_SLOT = ITEM_NUMERIC_WIDTH - 3, ITEM_NUMERIC_WIDTH - 2, ITEM_NUMERIC_WIDTH - 1
# Item times above this are not unix seconds (it is the year ~5138): most likely milliseconds.
MAX_UNIX_SECONDS = 1e11
# Age given to the items of a source none of whose items is timed: the end of the recency scale (recency 1).
UNTIMED_AGE_DAYS = math.expm1(RECENCY_SCALE)
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


@dataclass
class SourceItems:
    """One sequence source of a user.

    `texts` and `numeric` (n, ITEM_NUMERIC_WIDTH) describe the newest items, one soft token each; the summary
    covers every stored item, up to the source's `max_items` (`summary_texts`, whose item vectors are averaged,
    and `summary_numeric`, the mean numeric features, log item count and summary flag), so a short token budget
    still sees the whole history.
    """

    texts: list[str]
    numeric: np.ndarray
    summary_texts: list[str]
    summary_numeric: np.ndarray


@dataclass
class UserBehaviour:
    """One user's featurized behaviour; sources without items are absent from `sources`."""

    sources: dict[str, SourceItems] = field(default_factory=dict)
    profile: np.ndarray | None = None  # (PROFILE.vector_width,)

    @property
    def is_empty(self) -> bool:
        """True when the user has no item in any source and no profile (e.g. an unknown user)."""
        return not self.sources and self.profile is None


def num_rows(features: Any) -> int:
    """Number of user rows in a DataFrame or dict of lists."""
    if isinstance(features, Mapping):
        lengths = {len(v) for v in features.values()}
        if len(lengths) > 1:
            raise DataValidationError(f"feature columns have different lengths: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
    return len(features)


def _require_columns_container(features: Any) -> None:
    """Raise unless `features` is a DataFrame-like table or a mapping of one sequence per column."""
    if isinstance(features, Mapping):
        for name, values in features.items():
            if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
                raise DataValidationError(
                    f"column {name!r} is a {type(values).__name__}: give one list or array per column, one value "
                    "per user"
                )
    elif not hasattr(features, "columns"):
        raise DataValidationError(
            f"features must be a pandas DataFrame or a dict of lists (one per column), not a {type(features).__name__}"
        )


def short_column_names(features: Any) -> Any:
    """`features` with Feast's full column names (`<view>__<column>`) renamed to the schema's short names; a column
    already present under its short name wins, and other columns are left as they are."""
    present = _columns(features)
    renames = {n: short for n, short in full_feature_names().items() if n in present and short not in present}
    if not renames:
        return features
    if isinstance(features, Mapping):
        return {renames.get(name, name): values for name, values in features.items()}
    return features.rename(columns=renames)


def _columns(features: Any) -> set[str]:
    return set(features.keys()) if isinstance(features, Mapping) else set(features.columns)


def _column(features: Any, name: str) -> list[Any]:
    values = features[name]
    return list(values) if isinstance(features, Mapping) else values.tolist()


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    # pandas.NA: a null in a nullable column (duckdb returns nullable Int64 for an int column with nulls); NaT.
    return type(value).__name__ in ("NAType", "NaTType")


def _list_cell(value: Any, *, column: str, row: int) -> Any:
    """A sequence cell that must be a list (array, tuple): strings and scalars are refused by name."""
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__len__"):
        raise DataValidationError(
            f"column {column!r}, row {row}: expected a list of values, got {type(value).__name__} {value!r}"
        )
    return value


def _to_floats(values: Sequence[Any], *, column: str, row: int) -> np.ndarray:
    """A list cell as float64 (null -> NaN).

    Plain numbers convert at once; anything else (nulls, strings, timestamps, nested lists) goes value by value,
    so a value that is not a number is named in the error.
    """
    array = np.asarray(values)
    if array.ndim == 1 and array.dtype.kind in "biuf":
        return array.astype(np.float64)
    return np.array([_to_float(v, column=column, row=row) for v in values], dtype=np.float64)


def _to_float(value: Any, *, column: str, row: int) -> float:
    if _is_null(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataValidationError(
            f"column {column!r}, row {row}: {value!r} is not a number; check the source's dtypes"
        ) from None


def _scale(raw: Any, spec: ItemField | ProfileField) -> np.ndarray:
    """A field's normalized value(s) as float32; NaN where that is not a finite float32 (the caller's fallback)."""
    value = np.log1p(np.maximum(raw, 0.0)) if spec.transform == "log1p" else np.asarray(raw, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.asarray((value - spec.center) / spec.scale).astype(np.float32)
    return np.where(np.isfinite(scaled), scaled, np.float32(np.nan))


def _source_columns(features: Any, names: Sequence[str], source: str) -> bool:
    """Whether a source's columns are present (all) or absent (none); raise if only some are."""
    present = _columns(features)
    found = [n for n in names if n in present]
    if not found:
        _warn_once(f"absent:{source}", "no columns of source %r in the input: treated as missing", source)
        return False
    if len(found) != len(names):
        missing = [n for n in names if n not in present]
        raise DataValidationError(f"source {source!r} lacks columns {missing} (has {found}); request all of them")
    return True


def featurize(features: Any, *, max_items_per_source: int) -> list[UserBehaviour]:
    """Turn Feast feature rows into one `UserBehaviour` per row.

    Args:
        features: DataFrame or dict of lists with the six views' columns, one row per user.
        max_items_per_source: newest items kept per sequence source.

    Returns:
        One `UserBehaviour` per input row, in order.

    Raises:
        DataValidationError: not a table or dict of columns, no column of the six views, partially present
            sources, a sequence cell that is not a list, ragged lists, non-numeric numeric values, item times
            not in unix seconds.
    """
    _require_columns_container(features)
    features = short_column_names(features)
    rows = num_rows(features)
    if rows and not _columns(features) & set(feature_columns()):
        raise DataValidationError(
            f"none of the six views' feature columns is in the input (got {sorted(_columns(features))[:8]}); "
            "read them with Feast's feature references (schema.feature_refs())"
        )
    users = [UserBehaviour() for _ in range(rows)]
    nonfinite = 0
    # Newest item time over all sources of a row: recency is measured from it, so it depends on the row only.
    newest = np.full(rows, -np.inf)
    raw: dict[str, list[tuple[list[Any], dict[str, list[Any]]]]] = {}
    for source in SEQUENCE_SOURCES:
        if not _source_columns(features, source.feature_columns, source.name):
            continue
        ts_values = _column(features, source.ts_column)
        field_values = {f.name: _column(features, source.column(f.name)) for f in source.fields}
        per_row = []
        for row in range(rows):
            ts = ts_values[row]
            if _is_null(ts) or len(_list_cell(ts, column=source.ts_column, row=row)) == 0:
                _require_no_items(field_values, source, row)
                per_row.append(([], {}))
                continue
            ts = _to_floats(ts, column=source.ts_column, row=row)
            _require_unix_seconds(ts, column=source.ts_column, row=row)
            values = {}
            for f in source.fields:
                cell = field_values[f.name][row]
                if not _is_null(cell):
                    _list_cell(cell, column=source.column(f.name), row=row)
                if _is_null(cell) or len(cell) != len(ts):
                    raise _misaligned(source, f.name, row, items="null" if _is_null(cell) else len(cell), times=len(ts))
                values[f.name] = cell
            finite_ts = ts[np.isfinite(ts)]
            if finite_ts.size:
                newest[row] = max(newest[row], finite_ts.max())
            per_row.append((ts, values))
        raw[source.name] = per_row

    for source in SEQUENCE_SOURCES:
        if source.name not in raw:
            continue
        for row, (ts, values) in enumerate(raw[source.name]):
            if not len(ts):
                continue
            finite = np.isfinite(ts)
            order = np.argsort(np.where(finite, ts, -np.inf), kind="stable")  # newest last
            text_columns = [[v if isinstance(v, str) else _text(v) for v in values[f.name]] for f in source.text_fields]
            item_texts = [source.item_text(parts) for parts in zip(*text_columns, strict=True)]
            texts = [item_texts[i] for i in order]
            numeric = np.zeros((len(order), ITEM_NUMERIC_WIDTH), dtype=np.float32)
            for j, spec in enumerate(source.numeric_fields):
                raw_values = _to_floats(values[spec.name], column=source.column(spec.name), row=row)[order]
                scaled = _scale(np.where(np.isfinite(raw_values), raw_values, 0.0), spec)
                usable = np.isfinite(raw_values) & np.isfinite(scaled)
                nonfinite += int((~usable).sum())
                numeric[:, j] = np.where(usable, scaled, 0.0)
            age_days = (newest[row] - ts[order]) / 86400.0
            timed = finite[order]
            # An untimed item sorts as the oldest of its source, so it gets that oldest timed item's age; when
            # none of the source is timed, the recency scale's end (recency 1, ~180 days).
            age_days = np.where(timed, age_days, age_days[timed].max() if timed.any() else UNTIMED_AGE_DAYS)
            numeric[:, RECENCY_SLOT] = np.log1p(np.maximum(age_days, 0.0)) / RECENCY_SCALE
            stored = slice(-source.max_items, None)  # longer lists than a snapshot row holds: the newest
            summary = numeric[stored].mean(axis=0)
            summary[COUNT_SLOT] = math.log1p(min(len(order), source.max_items)) / math.log1p(source.max_items)
            summary[SUMMARY_FLAG_SLOT] = 1.0
            keep = slice(-max_items_per_source, None)
            users[row].sources[source.name] = SourceItems(
                texts=texts[keep], numeric=numeric[keep], summary_texts=texts[stored], summary_numeric=summary
            )

    if _source_columns(features, PROFILE.feature_columns, PROFILE.name):
        columns = {f.name: _column(features, PROFILE.column(f.name)) for f in PROFILE.fields}
        for row in range(rows):
            cells = [columns[f.name][row] for f in PROFILE.fields]
            if all(_is_null(c) for c in cells):
                continue
            vector, bad = _profile_vector(cells, row)
            nonfinite += bad
            users[row].profile = vector
    if nonfinite:
        _warn_once(
            "nonfinite",
            "null/NaN/inf numeric values replaced by the neutral value 0 (%d in this call)",
            nonfinite,
        )
    return users


def _require_unix_seconds(ts: np.ndarray, *, column: str, row: int) -> None:
    """Raise if item times are too large to be unix seconds (milliseconds or microseconds, by the look)."""
    finite = np.abs(ts[np.isfinite(ts)])
    if finite.size and finite.max() > MAX_UNIX_SECONDS:
        raise DataValidationError(
            f"row {row}: column {column!r} holds {finite.max():.4g}, beyond the year 5000 in unix seconds: "
            "item times must be unix seconds (milliseconds?)"
        )


def _require_no_items(field_values: dict[str, list[Any]], source: Any, row: int) -> None:
    """Raise if a row without item times has items in another column of the source (they would be lost)."""
    for name, values in field_values.items():
        cell = values[row]
        if not _is_null(cell) and len(_list_cell(cell, column=source.column(name), row=row)):
            raise _misaligned(source, name, row, items=len(cell), times="none")


def _misaligned(source: Any, name: str, row: int, *, items: int | str, times: int | str) -> DataValidationError:
    """The error for a row whose list column `name` of `source` does not align with the source's item times."""
    return DataValidationError(
        f"row {row}: column {source.column(name)!r} has {items} items but {source.ts_column!r} has {times}; list "
        "columns of a source must align"
    )


def _text(value: Any) -> str:
    return "" if _is_null(value) else str(value)


def _profile_vector(cells: list[Any], row: int) -> tuple[np.ndarray, int]:
    """The normalized profile vector of one row and the number of unusable numeric values in it."""
    vector = np.zeros(PROFILE.vector_width, dtype=np.float32)
    offset = 0
    bad = 0
    for spec, cell in zip(PROFILE.fields, cells, strict=True):
        if spec.kind == "numeric":
            value = _to_float(cell, column=PROFILE.column(spec.name), row=row)
            scaled = float(_scale(value, spec)) if math.isfinite(value) else math.nan
            if math.isfinite(scaled):
                vector[offset] = scaled
            else:
                vector[offset + 1] = 1.0  # missing flag
                bad += 0 if _is_null(cell) else 1
        else:
            text = _text(cell)
            slot = spec.categories.index(text) if text in spec.categories else len(spec.categories)
            vector[offset + slot] = 1.0
        offset += spec.width
    return vector, bad
