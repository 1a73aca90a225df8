"""Reading a data folder (`snapshots/`, `raw/`, `labels.parquet`) for training and evaluation.

`features_asof` gives, for (user, time) pairs, the latest snapshot row at or before that time in each of the
six sources: the same point-in-time rule as Feast's `get_historical_features`, without a registry, so the
trainer and the evaluation read exactly what a Feast offline read would return.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from instructue_plugin.errors import DataValidationError
from instructue_plugin.schema import ENTITY_KEY, PROFILE, SEQUENCE_BY_NAME, SEQUENCE_SOURCES, TIMESTAMP_COLUMN

SNAPSHOTS = "snapshots"
RAW = "raw"
LABELS = "labels.parquet"
# A time after every snapshot: features as of it are each user's latest.
LATEST = pd.Timestamp("2200-01-01", tz="UTC")


# What puts each part of a data folder in place (README: "Bring your own data").
_HOW_TO_MAKE = {
    SNAPSHOTS: "build it from raw logs with `instructue snapshots --raw DATA/raw --out DATA`, or generate a "
    "data folder with `instructue synth`",
    RAW: "UserQA and the evaluation read the raw logs there: put them at DATA/raw/<source>/*.parquet",
    LABELS: "add a labels.parquet with the columns user_id and split (train/eval)",
}


def _require(path: Path, what: str, part: str) -> Path:
    if not path.exists():
        raise DataValidationError(f"{what} not found at {path}; {_HOW_TO_MAKE[part]}")
    return path


def raw_files(raw_dir: Path, source: str) -> list[Path]:
    """The parquet files of one source's raw log: `<raw_dir>/<source>/**/*.parquet` and `<raw_dir>/<source>.parquet`."""
    folder = raw_dir / source
    files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    single = raw_dir / f"{source}.parquet"
    return files + ([single] if single.is_file() else [])


def snapshot_tables(data_dir: Path) -> dict[str, Path]:
    """The snapshot table of each of the six sources, by source name.

    Raises:
        DataValidationError: a table is missing or lacks a column of the schema (data of other definitions).
    """
    snapshots = _require(Path(data_dir) / SNAPSHOTS, "snapshots folder", SNAPSHOTS)
    tables = {}
    for source in [*SEQUENCE_SOURCES, PROFILE]:
        path = _require(snapshots / f"{source.name}.parquet", f"snapshot table {source.name!r}", SNAPSHOTS)
        present = set(pq.read_schema(path).names)
        missing = [c for c in (ENTITY_KEY, TIMESTAMP_COLUMN, *source.feature_columns) if c not in present]
        if missing:
            raise DataValidationError(
                f"snapshot table {path} lacks the column(s) {', '.join(missing)} of this schema: data of other "
                "feature definitions? Rebuild it with `instructue snapshots`"
            )
        tables[source.name] = path
    return tables


def read_labels(data_dir: Path, *, required: tuple[str, ...] = (ENTITY_KEY, "split")) -> pd.DataFrame:
    """The labels table (user_id, split; the generator's also cutoff, tasks, oracles).

    Raises:
        DataValidationError: no labels.parquet, or it lacks a `required` column.
    """
    path = _require(Path(data_dir) / LABELS, "labels.parquet", LABELS)
    labels = pd.read_parquet(path)
    missing = [column for column in required if column not in labels.columns]
    if missing:
        raise DataValidationError(f"{path} has no column {', '.join(missing)} (columns: {list(labels.columns)})")
    return labels


def features_asof(data_dir: Path, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time feature rows for `entities` (`user_id`, `event_timestamp`), in the entities' order.

    Returns the entity columns followed by every feature column of the six sources (null where a user has
    no snapshot at or before the time).
    """
    tables = snapshot_tables(data_dir)
    frame = entities[[ENTITY_KEY, TIMESTAMP_COLUMN]].copy()
    frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True)
    frame["_row"] = range(len(frame))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("entities", frame)
    selects, joins = [], []
    for i, (name, columns) in enumerate(
        [(s.name, s.feature_columns) for s in SEQUENCE_SOURCES] + [(PROFILE.name, PROFILE.feature_columns)]
    ):
        selects += [f's{i}."{c}"' for c in columns]
        joins.append(
            f"ASOF LEFT JOIN read_parquet({sql_path(tables[name])}) s{i} ON e.{ENTITY_KEY} = s{i}.{ENTITY_KEY} "
            f"AND e.{TIMESTAMP_COLUMN} >= s{i}.{TIMESTAMP_COLUMN}"
        )
    query = (
        f"SELECT e._row, e.{ENTITY_KEY}, e.{TIMESTAMP_COLUMN}, {', '.join(selects)} "
        f"FROM entities e {' '.join(joins)} ORDER BY e._row"
    )
    result = con.execute(query).df().drop(columns="_row")
    con.close()
    return result.reset_index(drop=True)


def raw_events(data_dir: Path, source: str, *, user_ids: list[int] | None = None) -> pd.DataFrame:
    """Raw events of one sequence source (optionally only some users), sorted by user and time; null text is "".

    A source with no raw log gives an empty frame with the source's columns (`instructue snapshots` accepts
    missing sources too).
    """
    files = raw_files(_require(Path(data_dir) / RAW, "raw logs folder", RAW), source)
    if not files:
        spec = SEQUENCE_BY_NAME[source]
        columns = {ENTITY_KEY: pd.Series(dtype="int64"), TIMESTAMP_COLUMN: pd.Series(dtype="datetime64[us, UTC]")}
        return pd.DataFrame(columns | {f.name: pd.Series(dtype=object) for f in spec.fields})
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    where = ""
    if user_ids is not None:
        con.register("wanted", pd.DataFrame({ENTITY_KEY: list(user_ids)}))
        where = f"WHERE {ENTITY_KEY} IN (SELECT {ENTITY_KEY} FROM wanted)"
    types = _column_types(con, files)
    expected = (ENTITY_KEY, TIMESTAMP_COLUMN, *(f.name for f in SEQUENCE_BY_NAME[source].fields))
    missing = [c for c in expected if c not in types]
    if missing:
        con.close()
        raise DataValidationError(f"raw log of {source!r} ({files[0].parent}) lacks the column(s) {', '.join(missing)}")
    time = _utc_time(types[TIMESTAMP_COLUMN])
    # Events at the same time keep the log's own order (file, then row), so answers built from them are stable.
    query = (
        f"SELECT * EXCLUDE (filename, file_row_number) REPLACE ({time} AS {TIMESTAMP_COLUMN}) "
        f"FROM read_parquet({_sql_list(files)}, filename = true, file_row_number = true) {where} "
        f"ORDER BY {ENTITY_KEY}, {TIMESTAMP_COLUMN}, filename, file_row_number"
    )
    events = con.execute(query).df()
    con.close()
    for spec in SEQUENCE_BY_NAME[source].fields:  # null text reads as "", as `instructue snapshots` reads it
        if spec.role == "text" and spec.name in events:
            events[spec.name] = events[spec.name].fillna("")
    return events


def _column_types(con: duckdb.DuckDBPyConnection, files: list[Path]) -> dict[str, str]:
    """Column name -> duckdb type of the parquet files read as one table."""
    rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_list(files)})").fetchall()
    return {row[0]: row[1] for row in rows}


def _utc_time(kind: str) -> str:
    """SQL for the raw files' event time (of duckdb type `kind`) as a UTC timestamp, in each form `instructue
    snapshots` reads: a zoned timestamp, a naive one (UTC), a date, or unix seconds as a number."""
    if kind.endswith("WITH TIME ZONE"):
        return TIMESTAMP_COLUMN
    if kind.startswith(("TIMESTAMP", "DATE")):
        return f"timezone('UTC', CAST({TIMESTAMP_COLUMN} AS TIMESTAMP))"
    return f"to_timestamp(CAST({TIMESTAMP_COLUMN} AS DOUBLE))"


def last_event_time(data_dir: Path) -> pd.Timestamp:
    """Time of the newest raw event over the five sequence sources."""
    raw = _require(Path(data_dir) / RAW, "raw logs folder", RAW)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    newest = []
    for source in SEQUENCE_SOURCES:
        if files := raw_files(raw, source.name):
            time = _utc_time(_column_types(con, files).get(TIMESTAMP_COLUMN, ""))
            newest.append(con.execute(f"SELECT max({time}) FROM read_parquet({_sql_list(files)})").fetchone()[0])
    con.close()
    if not any(t is not None for t in newest):
        raise DataValidationError(f"no raw event of any source under {raw}")
    return pd.Timestamp(max(t for t in newest if t is not None)).tz_convert("UTC")


def snapshot_times(data_dir: Path) -> list[pd.Timestamp]:
    """Every distinct snapshot time over the six snapshot tables, in order."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    union = " UNION ".join(
        f"SELECT DISTINCT {TIMESTAMP_COLUMN} AS t FROM read_parquet({sql_path(path)})"
        for path in snapshot_tables(data_dir).values()
    )
    times = con.execute(f"SELECT t FROM ({union}) ORDER BY t").df()["t"]
    con.close()
    return list(pd.to_datetime(times, utc=True))


def sql_path(path: Path) -> str:
    """A file path as a DuckDB string literal (quotes in the path doubled)."""
    return "'" + str(path).replace("'", "''") + "'"


def _sql_list(files: list[Path]) -> str:
    return "[" + ", ".join(sql_path(f) for f in files) + "]"


def latest_features_sample(data_dir: Path, users: int, *, seed: int = 0) -> pd.DataFrame:
    """The latest feature rows of `users` users drawn at random (seeded) from the data folder's snapshots.

    Rows of real users for calibrating and checking an export (`instructue export --calibration-data`).
    """
    tables = list(snapshot_tables(data_dir).values())
    con = duckdb.connect()
    ids = con.execute(f"SELECT DISTINCT {ENTITY_KEY} FROM read_parquet({_sql_list(tables)}) ORDER BY 1").df()[
        ENTITY_KEY
    ]
    con.close()
    if ids.empty:
        raise DataValidationError(f"{Path(data_dir) / SNAPSHOTS} holds no users")
    chosen = ids.sample(min(users, len(ids)), random_state=seed).sort_values()
    return features_asof(data_dir, pd.DataFrame({ENTITY_KEY: chosen.to_numpy(), TIMESTAMP_COLUMN: LATEST}))
