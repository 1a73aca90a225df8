"""Fixtures for the Feast repo tests: a small snapshot dataset, and one applied and materialized copy of
`feast_repo/` in a temporary folder, shared by the whole module (each feast CLI call takes seconds).

The data folder is the `snapshot_data_dir` fixture; the tests derive every expected value from the parquet
files it holds, so it can be swapped for the real generator (`instructue synth ... --out DIR`) without
touching the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructue_plugin import schema
from instructue_plugin.feast_definitions import snapshot_arrow_schema, snapshot_path
from instructue_plugin.feast_store import open_store

REPO_SOURCE = Path(__file__).resolve().parents[2] / "feast_repo"
# The venv's own feast, so the tests do not depend on PATH.
FEAST = str(Path(sys.executable).with_name("feast"))
CLI_TIMEOUT_S = 300

# Snapshot rows fall on these dates; item times fall in [EVENTS_START, the last snapshot).
SNAPSHOT_TIMES = tuple(datetime(2025, month, 1, tzinfo=UTC) for month in (1, 2, 3, 4))
EVENTS_START = datetime(2024, 11, 1, tzinfo=UTC)
# The materialization window covers every snapshot row of the handmade data and of the generator (2026).
MATERIALIZE_START = "2024-01-01T00:00:00+00:00"
MATERIALIZE_END = "2027-01-01T00:00:00+00:00"
# `feast materialize` names the six behaviour views: the materialized-embedding view's batch source (its
# offline copy) exists only once `instructue materialize` has run (see feast_repo/README.md).
BEHAVIOUR_VIEW_ARGS = tuple(arg for name in schema.SOURCE_NAMES for arg in ("--views", name))


def write_snapshot_dataset(out_dir: Path, *, users: int = 300, seed: int = 0) -> Path:
    """Write a small deterministic dataset in the snapshot format to `out_dir/snapshots/`.

    Each user appears in a source with probability 0.9, with 2 or 3 snapshot rows on distinct dates; the rows
    hold the last `max_items` items before the snapshot time, so later rows hold different lists and some rows
    (no items yet, or a user with no items at all) hold empty lists. Profile rows change between snapshots and
    hold a few nulls (5 %).

    Args:
        out_dir: the data folder to write (created if missing).
        users: number of users; ids are non-contiguous (10000, 10007, ...).
        seed: random seed.

    Returns:
        `out_dir`.
    """
    rng = np.random.default_rng(seed)
    user_ids = [10_000 + 7 * i for i in range(users)]
    first_s, last_s = int(EVENTS_START.timestamp()), int(SNAPSHOT_TIMES[-1].timestamp())
    (Path(out_dir) / "snapshots").mkdir(parents=True, exist_ok=True)

    for source in schema.SEQUENCE_SOURCES:
        rows = []
        for user_id in user_ids:
            if rng.random() < 0.1:
                continue  # the user has no row in this source
            n_items = 0 if rng.random() < 0.1 else int(rng.integers(1, 60))
            item_ts = np.sort(rng.integers(first_s, last_s, size=n_items))
            values = {
                f.name: (
                    [f"{source.name}-{f.name}-{k}" for k in rng.integers(0, 40, size=n_items)]
                    if f.role == "text"
                    else rng.gamma(2.0, 40.0, size=n_items).astype(np.float32).tolist()
                )
                for f in source.fields
            }
            for snapshot_time in _snapshot_times(rng):
                kept = np.flatnonzero(item_ts < snapshot_time.timestamp())[-source.max_items :]
                row = {schema.ENTITY_KEY: user_id, schema.TIMESTAMP_COLUMN: snapshot_time}
                for f in source.fields:
                    row[source.column(f.name)] = [values[f.name][i] for i in kept]
                row[source.ts_column] = item_ts[kept].tolist()
                rows.append(row)
        _write(rows, source.name, out_dir)

    rows = []
    for user_id in user_ids:
        if rng.random() < 0.1:
            continue
        for snapshot_time in _snapshot_times(rng):
            row = {schema.ENTITY_KEY: user_id, schema.TIMESTAMP_COLUMN: snapshot_time}
            for f in schema.PROFILE.fields:
                row[schema.PROFILE.column(f.name)] = None if rng.random() < 0.05 else _profile_value(f, rng)
            rows.append(row)
    _write(rows, schema.PROFILE.name, out_dir)
    return Path(out_dir)


def _profile_value(field: schema.ProfileField, rng: np.random.Generator) -> int | float | str:
    if field.kind == "categorical":
        return str(rng.choice(field.categories))
    if field.dtype == "int":
        return int(rng.integers(0, 3000))
    return float(np.float32(rng.gamma(2.0, 40.0)))


def _snapshot_times(rng: np.random.Generator) -> list[datetime]:
    picked = rng.choice(len(SNAPSHOT_TIMES), size=int(rng.integers(2, 4)), replace=False)
    return [SNAPSHOT_TIMES[i] for i in sorted(picked)]


def _write(rows: list[dict], source_name: str, out_dir: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=snapshot_arrow_schema(source_name))
    pq.write_table(table, snapshot_path(out_dir, source_name))


def run_feast(repo: Path, *args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real feast CLI inside `repo` (the registry URL is relative to the current directory)."""
    env = {**os.environ, **(env or {}), "INSTRUCTUE_DATA": str(data_dir)}
    result = subprocess.run([FEAST, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if result.returncode != 0:
        command = " ".join(args)
        pytest.fail(f"`feast {command}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def snapshot_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder the repo is applied on. Swap the body for the real generator to test on its output."""
    return write_snapshot_dataset(tmp_path_factory.mktemp("instructue_data"))


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory: pytest.TempPathFactory, snapshot_data_dir: Path) -> Path:
    """A copy of `feast_repo/` after `feast apply` and `feast materialize` (six views) on `snapshot_data_dir`."""
    return apply_repo_copy(tmp_path_factory.mktemp("feast"), data_dir=snapshot_data_dir)


def apply_repo_copy(parent: Path, *, data_dir: Path, env: dict[str, str] | None = None) -> Path:
    """Copy `feast_repo/` into `parent`, then `feast apply` and `feast materialize` its six behaviour views."""
    repo = parent / "feast_repo"
    shutil.copytree(REPO_SOURCE, repo, ignore=shutil.ignore_patterns("*.db", "data", "__pycache__"))
    run_feast(repo, "apply", data_dir=data_dir, env=env)
    run_feast(repo, "materialize", MATERIALIZE_START, MATERIALIZE_END, *BEHAVIOUR_VIEW_ARGS, data_dir=data_dir, env=env)
    return repo


@pytest.fixture(scope="module")
def store(applied_repo: Path):
    return open_store(applied_repo)
