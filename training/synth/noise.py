"""Noise injection into feature frames, for the noise-robustness evaluation (DESIGN §5).

Each sequence source of each row gets `round(rate × n_items)` extra events (halves round up), at uniformly
random whole seconds within the row's existing time span (earliest to latest item over all its sources); the
list is re-sorted by time (an existing item stays before an injected one at the same second) and cut to the
source's `max_items` (or to the row's own length when its snapshot stored more), keeping the newest. What the
injected items are comes from an item sampler: by default `synthetic_items`, the generator's noise model (a
uniformly random category, a uniformly random catalog item of that category, the secondary field (channel,
action) and the numbers drawn by category for a typical user); a dataset with another catalog passes its own
(e.g. `training.movielens.MovieNoise`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.schema import SEQUENCE_SOURCES, SequenceSource
from training.synth.catalog import ACTIONS, CATEGORIES, CHANNELS, PRIMARY
from training.synth.generator import sample_numeric, sample_secondary


def _list_type(source: SequenceSource, column: str) -> pa.DataType:
    if column == source.ts_column:
        return pa.list_(pa.int64())
    role = next(f.role for f in source.fields if source.column(f.name) == column)
    return pa.list_(pa.string() if role == "text" else pa.float32())


def _to_arrow(series: pd.Series, type_: pa.DataType) -> pa.ListArray:
    values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in series.tolist()]
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataValidationError(f"column {series.name!r} does not hold lists of {type_.value_type}: {exc}") from exc


def _present_sources(features: pd.DataFrame) -> list[SequenceSource]:
    present = []
    for source in SEQUENCE_SOURCES:
        have = [c for c in source.feature_columns if c in features.columns]
        if have and len(have) < len(source.feature_columns):
            missing = sorted(set(source.feature_columns) - set(have))
            raise DataValidationError(f"feature frame has some {source.name!r} columns but lacks {missing}")
        if have:
            present.append(source)
    return present


# (source, number of items, generator) -> one array of that many values per field of the source.
ItemSampler = Callable[[SequenceSource, int, np.random.Generator], dict[str, pa.Array]]


def synthetic_items(source: SequenceSource, n: int, rng: np.random.Generator) -> dict[str, pa.Array]:
    """`n` noise items of a source as the generator makes them: random category, random item of it."""
    category = rng.integers(0, len(CATEGORIES), n)
    item = PRIMARY[source.name].sample(category, rng.random(n), uniform=np.ones(n, bool))
    secondary = sample_secondary(source.name, category, rng.random(n))
    numeric = sample_numeric(source.name, category, secondary, rng)
    catalog = PRIMARY[source.name]
    out = {
        catalog.field: pa.array(catalog.names).take(pa.array(item)),
        "category": pa.array(CATEGORIES).take(pa.array(category)),
    }
    if secondary is not None:
        names = CHANNELS if source.name == "bill" else ACTIONS
        out["channel" if source.name == "bill" else "action"] = pa.array(names).take(pa.array(secondary))
    return out | {name: pa.array(values) for name, values in numeric.items()}


def inject_noise(
    features: pd.DataFrame, *, rate: float, seed: int, items: ItemSampler = synthetic_items
) -> pd.DataFrame:
    """A copy of `features` with random noise events added to each row's sequence sources.

    Args:
        features: snapshot rows: `user_id` and the sequence sources' feature columns (lists, newest last;
            None for a user without data). Sources whose columns are absent are left alone.
        rate: noise events per existing item (0 returns an equal copy).
        seed: random seed.
        items: draws the injected items of a source (default: the synthetic catalog's noise model).
    Returns:
        A new frame with the same index and columns; noisy list columns hold numpy arrays.
    Raises:
        ConfigError: `rate` negative or not finite.
        DataValidationError: a source's columns are only partly present, or do not hold lists.
    """
    if not math.isfinite(rate) or rate < 0:
        raise ConfigError(f"noise rate must be a finite number >= 0, got {rate!r}")
    out = features.copy()
    sources = _present_sources(features)
    if rate == 0 or not sources or len(features) == 0:
        return out
    rng = np.random.default_rng(seed)
    n_rows = len(features)
    ts_lists = {s.name: _to_arrow(features[s.ts_column], pa.list_(pa.int64())) for s in sources}
    # Each row's time span over all its sources.
    lo = np.full(n_rows, np.iinfo(np.int64).max)
    hi = np.full(n_rows, np.iinfo(np.int64).min)
    for arr in ts_lists.values():
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
        rows = np.repeat(np.arange(n_rows), lengths)
        flat = arr.flatten().to_numpy()
        np.minimum.at(lo, rows, flat)
        np.maximum.at(hi, rows, flat)

    for source in sources:
        ts_arr = ts_lists[source.name]
        valid = ts_arr.is_valid().to_numpy(zero_copy_only=False)
        n_old = pc.fill_null(pc.list_value_length(ts_arr), 0).to_numpy().astype(np.int64)
        n_new = np.floor(rate * n_old + 0.5).astype(np.int64)
        total_new = int(n_new.sum())
        if total_new == 0:
            continue
        row_new = np.repeat(np.arange(n_rows), n_new)
        new_values = items(source, total_new, rng)
        span = hi[row_new] - lo[row_new] + 1
        ts_new = lo[row_new] + np.floor(rng.random(total_new) * span).astype(np.int64)

        # Merge old and new items per row, sorted by time, the newest kept up to the row's capacity: the
        # source's max_items, or the row's own length when its snapshot stored more (never cut below it).
        capacity = np.maximum(n_old, source.max_items)
        row_old = np.repeat(np.arange(n_rows), n_old)
        rows = np.concatenate([row_old, row_new])
        ts = np.concatenate([ts_arr.flatten().to_numpy(), ts_new])
        is_new = np.concatenate([np.zeros(len(row_old), np.int8), np.ones(total_new, np.int8)])
        order = np.lexsort((is_new, ts, rows))
        count = n_old + n_new
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        sorted_rows = rows[order]
        position = np.arange(len(order)) - starts[sorted_rows]
        keep = order[position >= (count - capacity)[sorted_rows]]
        offsets = pa.array(np.concatenate([[0], np.cumsum(np.minimum(count, capacity))]).astype(np.int32))
        mask = pa.array(~valid)
        for f in source.fields:
            column = source.column(f.name)
            old_lists = _to_arrow(features[column], _list_type(source, column))
            lengths = pc.fill_null(pc.list_value_length(old_lists), 0).to_numpy()
            if not np.array_equal(lengths, n_old):
                raise DataValidationError(f"column {column!r} has lists of other lengths than {source.ts_column!r}")
            old = old_lists.flatten()
            merged = pa.concat_arrays([old, new_values[f.name].cast(old.type)]).take(pa.array(keep))
            out[column] = pa.ListArray.from_arrays(offsets, merged, mask=mask).to_pandas().values
        merged_ts = pa.array(ts[keep], pa.int64())
        out[source.ts_column] = pa.ListArray.from_arrays(offsets, merged_ts, mask=mask).to_pandas().values
    return out
