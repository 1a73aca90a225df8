"""Raw event logs → the per-user snapshot tables that Feast reads.

Raw event-log format (what `instructue synth` writes and what `instructue snapshots` reads; bring your own
data in this shape):

    RAW/<source>/part-00000.parquet, part-00001.parquet, ...   (or a single RAW/<source>.parquet)

- `<source>` is one of `bill`, `miniprogram`, `page_path`, `app`, `search` (event logs) or `profile`.
- Every file has `user_id` (integer) and `event_timestamp` (a timestamp, UTC if it has no time zone; or
  unix seconds as a number), then the source's bare field names from `instructue_plugin.schema`:
  - bill: merchant, category, channel (strings), amount (number)
  - miniprogram: program, category, action (strings), dwell_s (number)
  - page_path: path (string)
  - app: app, category (strings), minutes (number)
  - search: query (string)
  - profile: age, city_tier, account_age_days, balance_bucket (integers), gender, occupation (strings);
    one row per user and time the profile was observed.
- One row per event, in any order. Extra columns are ignored. A source with no files gets an empty table.
- Rows with a null `user_id` or `event_timestamp`, or a non-finite numeric timestamp, are rejected.
  NaN/inf in numeric item fields are kept (as NaN); null text fields become "" (logged).

The generator writes `user_id` int64, `event_timestamp` timestamp[us, tz=UTC], strings and float32.

Snapshot tables (`OUT/snapshots/<source>.parquet`): `user_id` int64, `event_timestamp` timestamp[us, tz=UTC],
one list column `<source>_<field>` per item field (list<string> for text, list<float32> for numbers) and
`<source>_ts` (list<int64>, unix seconds): the user's last `max_items` items at or before `event_timestamp`,
newest last. `profile.parquet` holds `profile_<field>` scalars: the user's latest profile row at or before it.

Snapshot times run every `every` (default 7 days) from midnight UTC of the first event of any source until
the first time at or after the last event. A user gets a row at time t only if they have an event in
(previous time, t]: Feast takes the latest row at or before a lookup time, so a row for an unchanged
history would be redundant. Users are processed in hash buckets of bounded size (spilled to a temporary
folder next to the output), so memory stays bounded whatever the input size.

`snapshot_chunk` and `profile_chunk` are the one place that turns sorted events into snapshot rows; the
generator calls them too.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.feast_definitions import SNAPSHOTS_FOLDER, snapshot_arrow_schema, snapshot_path
from instructue_plugin.schema import (
    ENTITY_KEY,
    PROFILE,
    SEQUENCE_BY_NAME,
    SOURCE_NAMES,
    TIMESTAMP_COLUMN,
    SequenceSource,
)

from .data import raw_files

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = SNAPSHOTS_FOLDER
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


# What a data folder holds (written by `instructue synth` and the MovieLens builder; replaced on overwrite).
DATA_FOLDER_OUTPUTS = ("raw", SNAPSHOTS_FOLDER, "labels.parquet", "meta.json")


def raw_table(user_id: np.ndarray, ts_us: np.ndarray, fields: Mapping[str, pa.Array | np.ndarray]) -> pa.Table:
    """A raw event table: `user_id`, `event_timestamp` (from unix microseconds), then the given fields."""
    columns = {ENTITY_KEY: pa.array(user_id, pa.int64()), TIMESTAMP_COLUMN: pa.array(ts_us).cast(TIMESTAMP_TYPE)}
    columns.update({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in fields.items()})
    return pa.table(columns)


def prepare_data_folder(out_dir: Path, *, overwrite: bool) -> None:
    """Create `out_dir`; refuse a non-empty one unless `overwrite`, which removes only a previous build's outputs.

    Raises:
        DataValidationError: `out_dir` is a file, or holds something and `overwrite` is off.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataValidationError(f"output path {out_dir} is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise DataValidationError(
                f"output folder {out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace "
                "a previous build there, or choose an empty folder"
            )
        for name in DATA_FOLDER_OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


_US = 1_000_000
_MAX_SNAPSHOT_TIMES = 100_000
_ITEMS_PER_SLICE = 2_000_000  # list items per written slice of snapshot rows (bounds memory)
_EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# --- schemas (the layout the Feast views read is defined once, in the plugin) ------------------------------
def snapshot_schema(source: SequenceSource) -> pa.Schema:
    """Arrow schema of a sequence source's snapshot table."""
    return snapshot_arrow_schema(source.name)


def profile_schema() -> pa.Schema:
    """Arrow schema of the profile snapshot table."""
    return snapshot_arrow_schema(PROFILE.name)


# --- the one code path: sorted events → snapshot rows -----------------------------------------------------
def _sort_events(user_id: np.ndarray, ts_us: np.ndarray) -> np.ndarray | None:
    """Permutation that sorts events by (user, time), stably; None if they are sorted already."""
    if len(user_id) < 2:
        return None
    du = np.diff(user_id)
    if np.all((du > 0) | ((du == 0) & (np.diff(ts_us) >= 0))):
        return None
    return np.lexsort((ts_us, user_id))


def _last_items(
    user_id: np.ndarray, ts_us: np.ndarray, row_user: np.ndarray, row_time_us: np.ndarray, max_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each requested row, the indices of the user's last `max_items` events at or before its time.

    Events must be sorted by (user, time). Returns `offsets` (n_rows + 1,) and `idx` (offsets[-1],) such
    that row r's items are `idx[offsets[r]:offsets[r + 1]]`, oldest first.
    """
    n_rows = len(row_user)
    begin = np.zeros(n_rows, dtype=np.int64)
    end = np.zeros(n_rows, dtype=np.int64)
    if len(user_id) and n_rows:
        starts = np.flatnonzero(np.r_[True, user_id[1:] != user_id[:-1]])
        stops = np.r_[starts[1:], len(user_id)]
        uniq = user_id[starts]
        pos = np.minimum(np.searchsorted(uniq, row_user), len(uniq) - 1)
        present = uniq[pos] == row_user
        # Search (rank, time) keys in one int64 array: rank * span + (time - base). Ranks are batched so the
        # key never overflows, whatever the time range.
        base = int(ts_us.min())
        span = int(ts_us.max()) - base + 2
        ranks_per_batch = max(1, (2**62) // span)
        for r0 in range(0, len(uniq), ranks_per_batch):
            r1 = min(r0 + ranks_per_batch, len(uniq))
            lo, hi = starts[r0], stops[r1 - 1]
            rank = np.repeat(np.arange(r1 - r0, dtype=np.int64), stops[r0:r1] - starts[r0:r1])
            key = rank * span + (ts_us[lo:hi] - base)
            rows = np.flatnonzero(present & (pos >= r0) & (pos < r1))
            rel = np.clip(row_time_us[rows] - base, -1, span - 2)
            end[rows] = lo + np.searchsorted(key, (pos[rows] - r0) * span + rel, side="right")
            begin[rows] = np.maximum(starts[pos[rows]], end[rows] - max_items)
    lengths = end - begin
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(begin - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, idx


def _row_items(
    user_id: np.ndarray, ts_us: np.ndarray, row_user: np.ndarray, row_time_us: np.ndarray, max_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_last_items` for events in any order: returned indices point into the caller's arrays."""
    user_id = np.asarray(user_id, dtype=np.int64)
    ts_us = np.asarray(ts_us, dtype=np.int64)
    order = _sort_events(user_id, ts_us)
    if order is not None:
        user_id, ts_us = user_id[order], ts_us[order]
    offsets, idx = _last_items(
        user_id, ts_us, np.asarray(row_user, np.int64), np.asarray(row_time_us, np.int64), max_items
    )
    return offsets, (idx if order is None else order[idx])


def _take_text(values: pa.Array | pa.ChunkedArray, idx: np.ndarray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    taken = values.take(pa.array(idx))
    if pa.types.is_dictionary(taken.type):
        taken = taken.dictionary.take(taken.indices)
    return taken.cast(pa.string())


def _take_numeric(values: np.ndarray | pa.Array | pa.ChunkedArray, idx: np.ndarray) -> pa.Array:
    if not isinstance(values, np.ndarray):
        values = values.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    out = values[idx].astype(np.float32)
    out[~np.isfinite(out)] = np.nan  # inf is as unusable as NaN downstream; featurization handles NaN
    return pa.array(out, type=pa.float32())


def snapshot_chunk(
    source: SequenceSource,
    *,
    user_id: np.ndarray,
    ts_us: np.ndarray,
    fields: Mapping[str, np.ndarray | pa.Array | pa.ChunkedArray],
    row_user: np.ndarray,
    row_time_us: np.ndarray,
    max_items: int | None = None,
) -> pa.Table:
    """Snapshot rows of one sequence source from a chunk of events holding all events of the rows' users.

    Args:
        source: the sequence source.
        user_id: (n_events,) int64 user per event.
        ts_us: (n_events,) int64 event time, unix microseconds.
        fields: every item field of `source` by bare name: text fields as Arrow string or dictionary arrays,
            numeric fields as numpy or Arrow arrays, all aligned with `user_id`.
        row_user: (n_rows,) int64 user of each requested row.
        row_time_us: (n_rows,) int64 snapshot time of each row, unix microseconds.
        max_items: items kept per row (newest); defaults to `source.max_items`.
    Returns:
        A table with `snapshot_schema(source)`: per row, the user's last items at or before its time, newest
        last; a user without such events gets empty lists.
    """
    offsets, idx = _row_items(user_id, ts_us, row_user, row_time_us, max_items or source.max_items)
    ts_us = np.asarray(ts_us, dtype=np.int64)
    arrays: list[pa.Array] = [
        pa.array(np.asarray(row_user, np.int64)),
        pa.array(np.asarray(row_time_us, np.int64)).cast(TIMESTAMP_TYPE),
    ]
    pa_offsets = pa.array(offsets.astype(np.int32))
    for f in source.fields:
        values = _take_text(fields[f.name], idx) if f.role == "text" else _take_numeric(fields[f.name], idx)
        arrays.append(pa.ListArray.from_arrays(pa_offsets, values))
    item_seconds = np.floor_divide(ts_us[idx], _US)
    arrays.append(pa.ListArray.from_arrays(pa_offsets, pa.array(item_seconds, type=pa.int64())))
    return pa.Table.from_arrays(arrays, schema=snapshot_schema(source))


def profile_chunk(
    *,
    user_id: np.ndarray,
    ts_us: np.ndarray,
    fields: Mapping[str, np.ndarray | pa.Array | pa.ChunkedArray],
    row_user: np.ndarray,
    row_time_us: np.ndarray,
) -> pa.Table:
    """Profile snapshot rows: each row's user's latest profile observation at or before its time.

    Args:
        user_id, ts_us: (n,) profile observations (any order).
        fields: every profile field by bare name, aligned with `user_id`.
        row_user, row_time_us: the requested rows.
    Returns:
        A table with `profile_schema()`; fields are null where the user has no observation yet.
    """
    offsets, idx = _row_items(user_id, ts_us, row_user, row_time_us, 1)
    has = np.diff(offsets) > 0
    # Rows without an observation take element 0 and are then masked to null.
    take = np.zeros(len(has), dtype=np.int64)
    take[has] = idx
    schema = profile_schema()
    arrays: list[pa.Array] = [
        pa.array(np.asarray(row_user, np.int64)),
        pa.array(np.asarray(row_time_us, np.int64)).cast(TIMESTAMP_TYPE),
    ]
    for f in PROFILE.fields:
        target = schema.field(PROFILE.column(f.name)).type
        values = fields[f.name]
        values = pa.array(values) if isinstance(values, np.ndarray) else values
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if len(values) == 0:
            arrays.append(pa.nulls(len(has), type=target))
            continue
        taken = values.take(pa.array(take))
        if pa.types.is_dictionary(taken.type):
            taken = taken.dictionary.take(taken.indices)
        arrays.append(pc.if_else(pa.array(has), taken.cast(target), pa.scalar(None, type=target)))
    return pa.Table.from_arrays(arrays, schema=schema)


# --- raw input: validation and normalization --------------------------------------------------------------
def _expected_fields(name: str) -> dict[str, str]:
    """Bare field name → expected kind (`text`, `number`, `int`, `float`, `string`)."""
    if name == PROFILE.name:
        return {f.name: f.dtype for f in PROFILE.fields}
    return {f.name: ("text" if f.role == "text" else "number") for f in SEQUENCE_BY_NAME[name].fields}


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _type_ok(kind: str, t: pa.DataType) -> bool:
    if kind in ("text", "string"):
        return _is_text(t)
    if kind in ("number", "float", "int"):
        return _is_number(t)
    raise AssertionError(kind)


def _fail(table: str, path: Path, message: str) -> DataValidationError:
    return DataValidationError(f"raw table {table!r} ({path}): {message}")


def _check_schema(table: str, path: Path, schema: pa.Schema) -> None:
    expected = _expected_fields(table)
    wanted = [ENTITY_KEY, TIMESTAMP_COLUMN, *expected]
    for column in wanted:
        if column not in schema.names:
            raise _fail(
                table,
                path,
                f"lacks column {column!r}; expected columns {', '.join(wanted)} "
                "(see the format in training/snapshots.py)",
            )
    t = schema.field(ENTITY_KEY).type
    if not pa.types.is_integer(t):
        raise _fail(table, path, f"column {ENTITY_KEY!r} has type {t}, expected an integer; cast it to int64")
    t = schema.field(TIMESTAMP_COLUMN).type
    if not (pa.types.is_timestamp(t) or pa.types.is_date(t) or _is_number(t)):
        raise _fail(
            table,
            path,
            f"column {TIMESTAMP_COLUMN!r} has type {t}, expected a timestamp (or unix seconds as a number)",
        )
    for column, kind in expected.items():
        t = schema.field(column).type
        if not _type_ok(kind, t):
            want = "a string" if kind in ("text", "string") else "a number (int or float)"
            raise _fail(table, path, f"column {column!r} has type {t}, expected {want}; cast it")


def _timestamps_us(table: str, path: Path, col: pa.Array) -> np.ndarray:
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        tz = t.tz if pa.types.is_timestamp(t) else None
        return col.cast(pa.timestamp("us", tz=tz), safe=False).cast(pa.int64()).to_numpy()
    seconds = col.cast(pa.float64()).to_numpy()
    bad = ~np.isfinite(seconds)
    if bad.any():
        raise _fail(
            table,
            path,
            f"{int(bad.sum())} rows have a non-finite {TIMESTAMP_COLUMN!r} (NaN or inf); drop or fix them",
        )
    return np.round(seconds * _US).astype(np.int64)


def _normalize(table: str, path: Path, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Validate one batch of raw rows and bring it to (user_id int64, ts_us int64, typed fields)."""
    for column in (ENTITY_KEY, TIMESTAMP_COLUMN):
        nulls = batch.column(column).null_count
        if nulls:
            raise _fail(table, path, f"{nulls} rows have a null {column!r}; every row needs a user and a time")
    arrays = [batch.column(ENTITY_KEY).cast(pa.int64()), pa.array(_timestamps_us(table, path, batch[TIMESTAMP_COLUMN]))]
    names = [ENTITY_KEY, "ts_us"]
    for column, kind in _expected_fields(table).items():
        col = batch.column(column)
        if kind in ("text", "string"):
            col = col.cast(pa.string())
            if kind == "text" and col.null_count:
                logger.warning("raw table %r (%s): %d null %r values read as ''", table, path, col.null_count, column)
                col = col.fill_null("")
        elif kind == "int":
            # Integers may arrive as floats (NaN for missing): round them, missing stays null.
            values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            ok = np.isfinite(values)
            col = pa.array(np.where(ok, np.round(values), 0).astype(np.int64), mask=~ok)
        else:
            col = col.cast(pa.float64())
        arrays.append(col)
        names.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def parse_every(every: str) -> int:
    """Seconds in a period like `7d`, `12h`, `1w`.

    Raises:
        ConfigError: the text is not a positive whole number followed by s, m, h, d or w.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", every or "")
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"snapshot period {every!r} is not like '7d', '12h' or '1w' (a positive number + s/m/h/d/w)")
    return int(match.group(1)) * _EVERY_UNITS[match.group(2)]


def _user_bucket(user_id: np.ndarray, n_buckets: int) -> np.ndarray:
    # Multiplicative hashing spreads consecutive or strided ids evenly over the buckets.
    mixed = (user_id.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(n_buckets)).astype(np.int64)


class _Spill:
    """One source's normalized rows, split into user buckets (in memory, or on disk when large)."""

    def __init__(self, name: str, n_buckets: int, folder: Path) -> None:
        self.name, self.n_buckets, self.folder = name, n_buckets, folder
        self.batches: list[list[pa.RecordBatch]] = [[] for _ in range(n_buckets)]
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.rows, self.min_us, self.max_us = 0, None, None

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        ts = batch.column("ts_us").to_numpy()
        self.rows += batch.num_rows
        lo, hi = int(ts.min()), int(ts.max())
        self.min_us = lo if self.min_us is None else min(self.min_us, lo)
        self.max_us = hi if self.max_us is None else max(self.max_us, hi)
        if self.n_buckets == 1:
            self.batches[0].append(batch)
            return
        bucket = _user_bucket(batch.column(ENTITY_KEY).to_numpy(), self.n_buckets)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.n_buckets + 1))
        sorted_batch = batch.take(pa.array(order))
        for b in range(self.n_buckets):
            if bounds[b + 1] > bounds[b]:
                part = sorted_batch.slice(bounds[b], bounds[b + 1] - bounds[b])
                if b not in self.writers:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self.writers[b] = pq.ParquetWriter(self.folder / f"{self.name}-{b:05d}.parquet", part.schema)
                self.writers[b].write_batch(part)

    def buckets(self):
        """Yield each bucket's rows as one table sorted by (user, time)."""
        for writer in self.writers.values():
            writer.close()
        for b in range(self.n_buckets):
            if self.n_buckets == 1:
                if not self.batches[0]:
                    continue
                table = pa.Table.from_batches(self.batches[0])
            else:
                path = self.folder / f"{self.name}-{b:05d}.parquet"
                if not path.exists():
                    continue
                table = pq.read_table(path)
            user = table.column(ENTITY_KEY).to_numpy()
            ts = table.column("ts_us").to_numpy()
            order = np.lexsort((ts, user))  # stable: equal times keep the file order
            yield table.take(pa.array(order))


def _snapshot_times(every_s: int, first_us: int, last_us: int) -> np.ndarray:
    day_us = 86400 * _US
    start = (first_us // day_us) * day_us
    n = math.ceil((last_us - start) / (every_s * _US)) + 1
    if n > _MAX_SNAPSHOT_TIMES:
        raise ConfigError(f"{n} snapshot times between the first and last event; choose a longer period")
    return start + np.arange(n, dtype=np.int64) * every_s * _US


def _to_us(times: Sequence[datetime | pd.Timestamp | str]) -> np.ndarray:
    stamps = [pd.Timestamp(t) for t in times]
    stamps = [t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in stamps]
    return np.unique(np.array([t.value // 1000 for t in stamps], dtype=np.int64))


def build_snapshots(
    raw_dir: Path,
    out_dir: Path,
    *,
    every: str = "7d",
    max_items: int | None = None,
    times: Sequence[datetime | pd.Timestamp | str] | None = None,
    chunk_rows: int = 2_000_000,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Turn raw event logs (format above) into Feast snapshot tables under `out_dir/snapshots/`.

    Args:
        raw_dir: folder holding `<source>/part-*.parquet` (a data folder with a `raw/` inside also works).
        out_dir: data folder; tables go to `out_dir/snapshots/<source>.parquet`.
        every: snapshot period, e.g. `7d`, `1d`, `12h`.
        max_items: items kept per row for every sequence source (newest), instead of the schema's.
        times: explicit snapshot times (UTC if naive) instead of `every`.
        chunk_rows: rows of one source held in memory at once; larger sources are bucketed by user.
        progress: show a tqdm bar per source.
        overwrite: replace existing snapshot tables.
    Returns:
        Source name → written table, for all six sources (a source without raw files gets an empty table).
    Raises:
        DataValidationError: missing folder or files, a missing column, a wrong type, null users or times,
            non-finite times, or existing tables without `overwrite`.
        ConfigError: a bad `every`, `max_items` or `chunk_rows`.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if max_items is not None and max_items <= 0:
        raise ConfigError(f"max_items must be positive, got {max_items}")
    if chunk_rows <= 0:
        raise ConfigError(f"chunk_rows must be positive, got {chunk_rows}")
    every_s = parse_every(every)
    if not any(raw_files(raw_dir, n) for n in SOURCE_NAMES) and any(
        raw_files(raw_dir / "raw", n) for n in SOURCE_NAMES
    ):
        logger.info("reading raw logs from %s (the raw/ folder inside %s)", raw_dir / "raw", raw_dir)
        raw_dir = raw_dir / "raw"
    files = {name: raw_files(raw_dir, name) for name in SOURCE_NAMES}
    if not any(files.values()):
        raise DataValidationError(
            f"no raw event logs under {raw_dir}: expected <source>/part-*.parquet for sources "
            f"{', '.join(SOURCE_NAMES)} (format in training/snapshots.py)"
        )
    snap_dir = out_dir / SNAPSHOT_DIR
    targets = {name: snapshot_path(out_dir, name) for name in SOURCE_NAMES}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise DataValidationError(f"snapshot tables already exist in {snap_dir}; pass overwrite=True to replace them")
    # Tables are written beside their targets and moved into place once all six are complete: a build that
    # fails (bad raw data, an interrupt) leaves the previous tables as they were.
    partial = {name: path.with_name(path.name + ".partial") for name, path in targets.items()}
    snap_dir.mkdir(parents=True, exist_ok=True)
    spill_dir = out_dir / ".snapshots-tmp"
    shutil.rmtree(spill_dir, ignore_errors=True)
    try:
        # Pass 1: validate every file, normalize rows, bucket them by user, find the time range.
        spills: dict[str, _Spill] = {}
        for name in SOURCE_NAMES:
            for path in files[name]:
                _check_schema(name, path, pq.read_schema(path))
            total = sum(pq.ParquetFile(p).metadata.num_rows for p in files[name])
            spill = _Spill(name, max(1, math.ceil(total / chunk_rows)), spill_dir)
            columns = [ENTITY_KEY, TIMESTAMP_COLUMN, *_expected_fields(name)]
            for path in files[name]:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=262_144, columns=columns):
                    spill.add(_normalize(name, path, batch))
            spills[name] = spill
            if not files[name]:
                logger.warning("no raw files for source %r under %s: writing an empty table", name, raw_dir)
        ranges = [(s.min_us, s.max_us) for s in spills.values() if s.rows]
        if not ranges:
            raise DataValidationError(f"the raw event logs under {raw_dir} hold no rows")
        if times is not None:
            times_us = _to_us(times)
            if len(times_us) == 0:
                raise ConfigError("times is empty")
        else:
            times_us = _snapshot_times(every_s, min(r[0] for r in ranges), max(r[1] for r in ranges))
        logger.info("%d snapshot times, %s .. %s", len(times_us), *(_iso(times_us[i]) for i in (0, -1)))
        # Pass 2: per bucket, rows at the snapshot times where the user has new events.
        for name, spill in spills.items():
            source = SEQUENCE_BY_NAME.get(name)
            schema = snapshot_schema(source) if source else profile_schema()
            with pq.ParquetWriter(partial[name], schema) as writer:
                bar = tqdm(total=spill.rows, desc=f"snapshots {name}", unit="ev", disable=not progress)
                for table in spill.buckets():
                    for rows in _bucket_rows(name, table, times_us, max_items):
                        writer.write_table(rows)
                    bar.update(table.num_rows)
                bar.close()
        for name, path in targets.items():
            partial[name].replace(path)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
        for path in partial.values():
            path.unlink(missing_ok=True)
    return targets


def _bucket_rows(name: str, table: pa.Table, times_us: np.ndarray, max_items: int | None) -> Iterator[pa.Table]:
    """Snapshot rows of one bucket (events sorted by user and time), in slices of bounded size."""
    user = table.column(ENTITY_KEY).to_numpy()
    ts = table.column("ts_us").to_numpy()
    # The row at times[k] covers events in (times[k-1], times[k]]; events after the last time get no row.
    k = np.searchsorted(times_us, ts, side="left")
    keep = k < len(times_us)
    u, k = user[keep], k[keep]
    new = np.r_[True, (u[1:] != u[:-1]) | (k[1:] != k[:-1])] if len(u) else np.zeros(0, bool)
    row_user, row_time = u[new], times_us[k[new]]
    # A user's history is repeated in each of their rows, so the output can dwarf the input: bound the
    # list items per written slice (rows are sorted by user, so a slice needs a contiguous event range).
    items = max_items or (SEQUENCE_BY_NAME[name].max_items if name in SEQUENCE_BY_NAME else 1)
    rows_per_slice = max(1, _ITEMS_PER_SLICE // items)
    for r0 in range(0, len(row_user), rows_per_slice):
        r1 = min(r0 + rows_per_slice, len(row_user))
        lo = int(np.searchsorted(user, row_user[r0], side="left"))
        hi = int(np.searchsorted(user, row_user[r1 - 1], side="right"))
        part = table.slice(lo, hi - lo)
        fields = {f: part.column(f) for f in _expected_fields(name)}
        events = {"user_id": user[lo:hi], "ts_us": ts[lo:hi], "fields": fields}
        rows = {"row_user": row_user[r0:r1], "row_time_us": row_time[r0:r1]}
        if name == PROFILE.name:
            yield profile_chunk(**events, **rows)
        else:
            yield snapshot_chunk(SEQUENCE_BY_NAME[name], **events, **rows, max_items=max_items)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / _US, tz=UTC).isoformat()


__all__ = [
    "SNAPSHOT_DIR",
    "build_snapshots",
    "parse_every",
    "profile_chunk",
    "profile_schema",
    "snapshot_chunk",
    "snapshot_schema",
]
