"""`feast_repo/` through the real feast CLI and SDK, on a temporary copy (fixtures in conftest.py).

Every expected value is read back from the snapshot parquet files, so the tests hold for any dataset in the
snapshot format: `apply` registers the schema, online reads return each user's latest snapshot row, and
historical reads return the row that was current at each entity timestamp.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from feast.online_response import TIMESTAMP_POSTFIX
from feast.types import Array, Float32, Int64, String

from instructue_plugin import schema
from instructue_plugin.feast_definitions import FEATURE_TTL, snapshot_arrow_schema, snapshot_path
from tests.feast_repo.conftest import write_snapshot_dataset
from training.synth import generate

# ibis (under the duckdb offline store) calls a duckdb method that duckdb 2 deprecates; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

UNKNOWN_USER = 999_999_999
ROW_ID = "row_id"

Row = dict[str, object]


def _columns(source_name: str) -> tuple[str, ...]:
    if source_name == schema.PROFILE.name:
        return schema.PROFILE.feature_columns
    return schema.SEQUENCE_BY_NAME[source_name].feature_columns


def _expected_dtypes(source_name: str) -> dict[str, object]:
    if source_name == schema.PROFILE.name:
        scalar = {"int": Int64, "float": Float32, "string": String}
        return {schema.PROFILE.column(f.name): scalar[f.dtype] for f in schema.PROFILE.fields}
    source = schema.SEQUENCE_BY_NAME[source_name]
    dtypes = {source.column(f.name): Array(String) if f.role == "text" else Array(Float32) for f in source.fields}
    dtypes[source.ts_column] = Array(Int64)
    return dtypes


@pytest.fixture(scope="module")
def snapshots(snapshot_data_dir: Path) -> dict[str, dict[int, list[Row]]]:
    """Per source, each user's snapshot rows (plain Python values), oldest first."""
    return _read_snapshots(snapshot_data_dir)


def _read_snapshots(snapshot_data_dir: Path) -> dict[str, dict[int, list[Row]]]:
    tables: dict[str, dict[int, list[Row]]] = {}
    for name in schema.SOURCE_NAMES:
        by_user: dict[int, list[Row]] = {}
        for row in pq.read_table(snapshot_path(snapshot_data_dir, name)).to_pylist():
            by_user.setdefault(row[schema.ENTITY_KEY], []).append(row)
        for rows in by_user.values():
            rows.sort(key=lambda r: r[schema.TIMESTAMP_COLUMN])
        tables[name] = by_user
    return tables


def _row_at(rows: list[Row], when: datetime) -> Row | None:
    """The snapshot row current at `when`: the newest one at or before it, however old (the views never expire)."""
    current = [r for r in rows if r[schema.TIMESTAMP_COLUMN] <= when]
    return current[-1] if current else None


def _assert_values(got: dict[str, object], expected: Row | None, source_name: str, where: str) -> None:
    """Compare one user's features of one view; lists element-wise (float32 values compare exactly)."""
    for column in _columns(source_name):
        want = None if expected is None else expected[column]
        value = got[column]
        if isinstance(want, list):
            assert value is not None, f"{where}: {column} is None, expected {len(want)} items"
            assert list(value) == want, (
                f"{where}: {column} has {len(value)} items ending {list(value)[-3:]}, "
                f"expected {len(want)} ending {want[-3:]}"
            )
        else:
            assert value == want, f"{where}: {column} = {value!r}, expected {want!r}"


def test_snapshot_files_match_the_schema(snapshot_data_dir: Path) -> None:
    for name in schema.SOURCE_NAMES:
        found = pq.read_schema(snapshot_path(snapshot_data_dir, name))
        expected = snapshot_arrow_schema(name)
        assert [(f.name, f.type) for f in found] == [(f.name, f.type) for f in expected], name


@pytest.fixture(scope="module", params=["handmade", "generated"])
def snapshot_data_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two datasets: a handmade one with every edge case, and 1,000 users from the synthetic generator."""
    folder = tmp_path_factory.mktemp(f"data-{request.param}")
    if request.param == "generated":
        generate(folder, users=1000, seed=3, progress=False)
        return folder
    return write_snapshot_dataset(folder)


def test_handmade_data_covers_the_edge_cases(tmp_path: Path) -> None:
    snapshots = _read_snapshots(write_snapshot_dataset(tmp_path))
    all_users = set().union(*(by_user.keys() for by_user in snapshots.values()))
    assert any(set(by_user) != all_users for by_user in snapshots.values()), "no user misses a source"
    latest_lists = [
        rows[-1][schema.SEQUENCE_BY_NAME[name].ts_column]
        for name in schema.SEQUENCE_BY_NAME
        for rows in snapshots[name].values()
    ]
    assert any(len(items) == 0 for items in latest_lists), "no latest row has empty lists"
    assert all(any(len(rows) >= 2 for rows in snapshots[n].values()) for n in schema.SOURCE_NAMES)


def test_apply_registers_the_user_entity_and_six_views(store, snapshot_data_dir: Path) -> None:
    # The embedding views (tests/feast_repo/test_embedding_views.py) add an instruction entity and a view.
    entities = [e for e in store.list_entities() if e.name == schema.ENTITY_NAME]
    assert len(entities) == 1
    assert entities[0].join_key == schema.ENTITY_KEY

    views = {fv.name: fv for fv in store.list_feature_views() if fv.name in schema.SOURCE_NAMES}
    assert sorted(views) == sorted(schema.SOURCE_NAMES)
    for name, view in views.items():
        assert [f.name for f in view.features] == list(_columns(name))
        assert {f.name: f.dtype for f in view.features} == _expected_dtypes(name)
        assert all(f.description for f in view.features), f"{name}: a field has no description"
        assert view.entities == [schema.ENTITY_NAME]
        assert view.ttl == FEATURE_TTL
        assert view.batch_source.path == str(snapshot_path(snapshot_data_dir, name))
        assert view.batch_source.timestamp_field == schema.TIMESTAMP_COLUMN


def test_online_read_returns_each_users_latest_snapshot(store, snapshots) -> None:
    users = sorted(set().union(*(by_user.keys() for by_user in snapshots.values())))
    response = store.get_online_features(
        features=schema.feature_refs(),
        entity_rows=[{schema.ENTITY_KEY: u} for u in users],
        full_feature_names=False,
    ).to_dict(include_event_timestamps=True)

    for i, user in enumerate(users):
        got = {column: values[i] for column, values in response.items()}
        for name in schema.SOURCE_NAMES:
            rows = snapshots[name].get(user)
            latest = rows[-1] if rows else None
            _assert_values(got, latest, name, where=f"user {user}, view {name}")
            if latest is not None:
                seconds = int(latest[schema.TIMESTAMP_COLUMN].timestamp())
                assert got[_columns(name)[0] + TIMESTAMP_POSTFIX] == seconds, f"user {user}, view {name}"


def test_unknown_user_reads_as_none_beside_known_users(store, snapshots) -> None:
    known = list(snapshots[schema.PROFILE.name])[:2]
    response = store.get_online_features(
        features=schema.feature_refs(),
        entity_rows=[{schema.ENTITY_KEY: u} for u in (known[0], UNKNOWN_USER, known[1])],
        full_feature_names=False,
    ).to_dict()

    assert response[schema.ENTITY_KEY] == [known[0], UNKNOWN_USER, known[1]]
    assert all(response[c][1] is None for c in schema.feature_columns())
    for i, user in ((0, known[0]), (2, known[1])):
        got = {column: values[i] for column, values in response.items()}
        for name in schema.SOURCE_NAMES:
            rows = snapshots[name].get(user)
            _assert_values(got, rows[-1] if rows else None, name, where=f"user {user}, view {name}")


def test_historical_read_is_point_in_time_correct(store, snapshots) -> None:
    # Per source, users with at least two snapshots: one entity row between their first two snapshots (must
    # get the earlier one), one a day before their first snapshot (must get nulls), and one three years after
    # their last (must still get it: a snapshot row never expires).
    cases: list[tuple[int, datetime, str, str]] = []  # (user, when, source, kind)
    for name in schema.SOURCE_NAMES:
        users = [u for u, rows in snapshots[name].items() if len(rows) >= 2][:10]
        for user in users:
            first, second = (r[schema.TIMESTAMP_COLUMN] for r in snapshots[name][user][:2])
            cases.append((user, first + (second - first) / 2, name, "between"))
            cases.append((user, first - timedelta(days=1), name, "before"))
            last = snapshots[name][user][-1][schema.TIMESTAMP_COLUMN]
            cases.append((user, last + timedelta(days=3 * 365), name, "years later"))
    cases.append((UNKNOWN_USER, cases[0][1], schema.PROFILE.name, "unknown"))
    entity_df = pd.DataFrame(
        {
            schema.ENTITY_KEY: [c[0] for c in cases],
            schema.TIMESTAMP_COLUMN: pd.to_datetime([c[1] for c in cases], utc=True),
            ROW_ID: range(len(cases)),
        }
    )

    table = store.get_historical_features(entity_df=entity_df, features=schema.feature_refs()).to_arrow()
    got_rows = {row[ROW_ID]: row for row in table.to_pylist()}

    assert sorted(got_rows) == list(range(len(cases)))
    changed = 0
    for row_id, (user, when, case_source, kind) in enumerate(cases):
        got = got_rows[row_id]
        for name in schema.SOURCE_NAMES:
            expected = _row_at(snapshots[name].get(user, []), when)
            where = f"{kind} row {row_id}: user {user} at {when}, view {name}"
            _assert_values(got, expected, name, where=where)
        if kind == "between":
            earlier, later = snapshots[case_source][user][:2]
            assert _row_at(snapshots[case_source][user], when) is earlier
            changed += any(earlier[c] != later[c] for c in _columns(case_source))
        elif kind == "years later":  # compared above with the user's last row, which is not expired
            assert _row_at(snapshots[case_source][user], when) is snapshots[case_source][user][-1]
        else:
            assert all(got[c] is None for c in _columns(case_source)), f"{kind} row {row_id}: not null"
    assert changed > 0, "no case where the two snapshots differ: the point-in-time check proves nothing"


def test_a_plain_file_registry_resolves_against_the_repo(tmp_path: Path, monkeypatch) -> None:
    from feast import Entity

    from instructue_plugin.feast_store import open_store

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: plain\nprovider: local\nregistry: data/registry.db\n"
        "online_store:\n  type: sqlite\n  path: online.db\nentity_key_serialization_version: 3\n"
    )
    monkeypatch.chdir(tmp_path)  # anywhere but the repo
    open_store(repo).apply([Entity(name="user", join_keys=["user_id"])])
    assert (repo / "data" / "registry.db").exists()
    assert [e.name for e in open_store(repo).list_entities()] == ["user"]
