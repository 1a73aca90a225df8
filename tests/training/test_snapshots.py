"""Raw event logs → snapshot tables: the documented format, validation, and parity with the generator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.schema import SEQUENCE_BY_NAME, SOURCE_NAMES
from training.snapshots import build_snapshots, parse_every, snapshot_chunk
from training.synth import generate
from training.synth.generator import snapshot_times_us

DAY = timedelta(days=1)
T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, midnight


def _write(raw: Path, source: str, table: pa.Table | pd.DataFrame, part: int = 0) -> None:
    folder = raw / source
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    pq.write_table(table, folder / f"part-{part:05d}.parquet")


def _bill(rows: list[tuple[int, datetime, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "event_timestamp": pd.to_datetime([r[1] for r in rows], utc=True),
            "merchant": [f"m{i}" for i in range(len(rows))],
            "category": ["food"] * len(rows),
            "channel": ["card"] * len(rows),
            "amount": [r[2] for r in rows],
        }
    )


def _search(rows: list[tuple[int, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "event_timestamp": pd.to_datetime([r[1] for r in rows], utc=True),
            "query": [f"q{i}" for i in range(len(rows))],
        }
    )


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snap") / "data"
    generate(out, users=1500, seed=11, progress=False)
    return out


def _latest_at(table: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    """What a Feast point-in-time read at `when` returns: each user's latest row at or before it."""
    rows = table[table["event_timestamp"] <= when].sort_values(["user_id", "event_timestamp"])
    return rows.groupby("user_id").last()


# In memory in one piece; and bucketed through disk, written in slices of a few rows.
@pytest.mark.parametrize("chunk_rows, items_per_slice", [(10_000_000, None), (40_000, 3_000)])
def test_reproduces_the_generators_snapshots(synth, tmp_path, monkeypatch, chunk_rows, items_per_slice):
    if items_per_slice:
        monkeypatch.setattr("training.snapshots._ITEMS_PER_SLICE", items_per_slice)
    times = list(pd.to_datetime(snapshot_times_us(), unit="us", utc=True))
    built = build_snapshots(synth / "raw", tmp_path, times=times, chunk_rows=chunk_rows, progress=False)
    assert set(built) == set(SOURCE_NAMES)
    for name in SOURCE_NAMES:
        ours = pd.read_parquet(built[name])
        theirs = pd.read_parquet(synth / "snapshots" / f"{name}.parquet")
        assert pq.read_schema(built[name]) == pq.read_schema(synth / "snapshots" / f"{name}.parquet")
        for when in times:
            generated = theirs[theirs["event_timestamp"] == when].set_index("user_id")
            read = _latest_at(ours, when)
            # Users without any event by then have no built row (Feast returns None); the generator's
            # rows for them are empty.
            if name != "profile":
                ts_column = SEQUENCE_BY_NAME[name].ts_column
                assert set(read.index) == set(generated.index[generated[ts_column].map(len) > 0])
            assert len(read) > 0.8 * len(generated)
            for column in generated.columns.drop("event_timestamp"):
                for a, b in zip(read[column], generated.loc[read.index, column], strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"{name}.{column} at {when}")


def test_every_7d_emits_rows_only_when_something_changed(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "bill", _bill([(1, T0 + timedelta(hours=5), 1.0), (1, T0 + DAY, 2.0), (1, T0 + 10 * DAY, 3.0),
                               (2, T0 + 3 * DAY, 4.0)]))  # fmt: skip
    _write(raw, "search", _search([(2, T0 + 15 * DAY)]))
    built = build_snapshots(raw, tmp_path / "out", progress=False)
    bill = pd.read_parquet(built["bill"])
    times = sorted(bill["event_timestamp"].unique())
    assert times[0] == pd.Timestamp(T0 + 7 * DAY)  # first period ends a week after the first event's midnight
    assert set(bill["event_timestamp"].map(lambda t: (t - pd.Timestamp(T0)) % pd.Timedelta(days=7))) == {
        pd.Timedelta(0)
    }
    rows = {(r.user_id, r.event_timestamp): list(r.bill_amount) for r in bill.itertuples()}
    assert rows == {
        (1, pd.Timestamp(T0 + 7 * DAY)): [1.0, 2.0],
        (1, pd.Timestamp(T0 + 14 * DAY)): [1.0, 2.0, 3.0],
        (2, pd.Timestamp(T0 + 7 * DAY)): [4.0],
    }
    search = pd.read_parquet(built["search"])
    assert list(search["event_timestamp"]) == [pd.Timestamp(T0 + 21 * DAY)]  # the last time covers the last event
    ts = bill.loc[bill["user_id"] == 2, "bill_ts"].iloc[0]
    assert list(ts) == [int((T0 + 3 * DAY).timestamp())]
    # Sources without raw files still get a (empty) table with the right schema.
    app = pq.read_table(built["app"])
    assert app.num_rows == 0 and "app_minutes" in app.schema.names


def test_max_items_keeps_the_newest(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "bill", _bill([(7, T0 + i * timedelta(hours=1), float(i)) for i in range(10)]))
    built = build_snapshots(raw, tmp_path / "out", max_items=3, progress=False)
    bill = pd.read_parquet(built["bill"])
    assert list(bill["bill_amount"].iloc[-1]) == [7.0, 8.0, 9.0]


def test_unsorted_input_and_several_files(tmp_path):
    raw = tmp_path / "raw"
    rows = [(3, T0 + i * timedelta(hours=3), float(i)) for i in range(6)]
    _write(raw, "bill", _bill(rows[3:][::-1]), part=0)
    _write(raw, "bill", _bill(rows[:3][::-1]), part=1)
    bill = pd.read_parquet(build_snapshots(raw, tmp_path / "out", progress=False)["bill"])
    # The event at exactly midnight gets its own row at that time; the week's row holds all six.
    assert [list(v) for v in bill["bill_amount"]] == [[0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]


def test_nan_and_inf_amounts_are_kept_as_nan(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "bill", _bill([(1, T0, 1.5), (1, T0 + DAY, float("nan")), (1, T0 + 2 * DAY, float("inf"))]))
    bill = pd.read_parquet(build_snapshots(raw, tmp_path / "out", progress=False)["bill"])
    amounts = bill["bill_amount"].iloc[-1]
    assert amounts.dtype == np.float32
    assert amounts[0] == 1.5 and np.isnan(amounts[1]) and np.isnan(amounts[2])


def test_missing_column_names_table_and_column(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "bill", _bill([(1, T0, 1.0)]).drop(columns=["channel"]))
    with pytest.raises(DataValidationError, match=r"'bill'.*'channel'"):
        build_snapshots(raw, tmp_path / "out", progress=False)


def test_wrong_type_names_table_and_column(tmp_path):
    raw = tmp_path / "raw"
    frame = _bill([(1, T0, 1.0)])
    frame["amount"] = frame["amount"].astype(str)
    _write(raw, "bill", frame)
    with pytest.raises(DataValidationError, match=r"'bill'.*'amount'.*string"):
        build_snapshots(raw, tmp_path / "out", progress=False)


def test_null_user_or_time_is_rejected(tmp_path):
    raw = tmp_path / "raw"
    table = pa.table(
        {
            "user_id": pa.array([1, None], pa.int64()),
            "event_timestamp": pa.array([0, 1], pa.timestamp("us", tz="UTC")),
            "query": ["a", "b"],
        }
    )
    _write(raw, "search", table)
    with pytest.raises(DataValidationError, match=r"'search'.*null 'user_id'"):
        build_snapshots(raw, tmp_path / "out", progress=False)
    _write(raw, "search", table.set_column(0, "user_id", pa.array([1, 2], pa.int64())).set_column(
        1, "event_timestamp", pa.array([0, None], pa.timestamp("us", tz="UTC"))))  # fmt: skip
    with pytest.raises(DataValidationError, match=r"'search'.*null 'event_timestamp'"):
        build_snapshots(raw, tmp_path / "out", progress=False)


def test_numeric_timestamps_must_be_finite(tmp_path):
    raw = tmp_path / "raw"
    frame = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [1.7e9, float("inf")], "query": ["a", "b"]})
    _write(raw, "search", frame)
    with pytest.raises(DataValidationError, match=r"'search'.*non-finite 'event_timestamp'"):
        build_snapshots(raw, tmp_path / "out", progress=False)
    frame["event_timestamp"] = [1.7e9, 1.7e9 + 60]  # unix seconds are fine
    _write(raw, "search", frame)
    search = pd.read_parquet(build_snapshots(raw, tmp_path / "out2", progress=False)["search"])
    assert list(search["search_ts"].iloc[0]) == [1_700_000_000, 1_700_000_060]


def test_existing_tables_need_overwrite(tmp_path):
    raw = tmp_path / "raw"
    _write(raw, "search", _search([(1, T0)]))
    build_snapshots(raw, tmp_path / "out", progress=False)
    with pytest.raises(DataValidationError, match="overwrite"):
        build_snapshots(raw, tmp_path / "out", progress=False)
    build_snapshots(raw, tmp_path / "out", progress=False, overwrite=True)


def test_empty_raw_folder_and_bad_options(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataValidationError, match="no raw event logs"):
        build_snapshots(tmp_path / "raw", tmp_path / "out", progress=False)
    for bad in ("7", "0d", "week", "-1d"):
        with pytest.raises(ConfigError):
            parse_every(bad)
    assert parse_every("7d") == 7 * 86400 and parse_every("12h") == 12 * 3600


def test_snapshot_chunk_gives_empty_lists_to_users_without_events():
    source = SEQUENCE_BY_NAME["search"]
    table = snapshot_chunk(
        source,
        user_id=np.array([2, 2], np.int64),
        ts_us=np.array([5_000_000, 9_000_000], np.int64),
        fields={"query": pa.array(["a", "b"])},
        row_user=np.array([1, 2, 2, 3], np.int64),
        row_time_us=np.array([10_000_000, 4_000_000, 5_000_000, 10_000_000], np.int64),
    )
    assert table.column("search_query").to_pylist() == [[], [], ["a"], []]
    assert table.column("search_ts").to_pylist() == [[], [], [5], []]


def test_a_failed_rebuild_keeps_the_previous_tables(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write(raw, "bill", _bill([(1, T0, 10.0), (2, T0 + DAY, 20.0)]))
    built = build_snapshots(raw, out, progress=False)
    before = {name: path.read_bytes() for name, path in built.items()}
    bad = _search([(1, T0)])
    bad["event_timestamp"] = pd.Series([None], dtype="datetime64[us, UTC]")  # a row without a time
    _write(raw, "search", bad)
    with pytest.raises(DataValidationError, match="null 'event_timestamp'"):
        build_snapshots(raw, out, overwrite=True, progress=False)
    assert {name: path.read_bytes() for name, path in built.items()} == before
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == sorted(p.name for p in built.values())
