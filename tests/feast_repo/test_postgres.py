"""The scale-out path: the same repo with its registry and online store on a real PostgreSQL server.

A throwaway server is started on a free loopback port (initdb + pg_ctl, as the `postgres` user when the tests
run as root) and removed afterwards. Skipped, with the reason, where no PostgreSQL server binaries exist.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructue_plugin import schema
from instructue_plugin.feast_definitions import snapshot_path
from instructue_plugin.feast_store import open_store
from tests.feast_repo.conftest import (
    BEHAVIOUR_VIEW_ARGS,
    MATERIALIZE_END,
    MATERIALIZE_START,
    REPO_SOURCE,
    run_feast,
)

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

FEATURE_STORE_YAML = """\
project: instructue
provider: local
registry:
  registry_type: sql
  path: postgresql+psycopg://postgres@127.0.0.1:{port}/feast
  cache_ttl_seconds: 60
offline_store:
  type: duckdb
online_store:
  type: postgres
  host: 127.0.0.1
  port: {port}
  database: feast
  user: postgres
  password: ""
  sslmode: disable
entity_key_serialization_version: 3
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when needed."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def postgres_port() -> Iterator[int]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install -e '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="instructue-pg-"))  # under /tmp: readable by the postgres user
    folder.chmod(0o755)
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, user="postgres", group="postgres")
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", "postgres"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
        # The server logs to a file: it must not inherit pipes that subprocess would wait on.
        start = [pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-o", options, "-w", "-t", "60", "start"]
        subprocess.run(
            _as_postgres(*start), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )
        psql = shutil.which("psql") or "psql"
        subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE feast"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield port
    finally:
        subprocess.run(
            _as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop"), capture_output=True, timeout=60
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_registry_and_online_store_on_postgres(postgres_port, snapshot_data_dir, tmp_path):
    repo = tmp_path / "feast_repo"
    shutil.copytree(REPO_SOURCE, repo, ignore=shutil.ignore_patterns("*.db", "data", "__pycache__"))
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML.format(port=postgres_port))
    run_feast(repo, "apply", data_dir=snapshot_data_dir)
    run_feast(repo, "materialize", MATERIALIZE_START, MATERIALIZE_END, *BEHAVIOUR_VIEW_ARGS, data_dir=snapshot_data_dir)

    store = open_store(repo)
    assert {fv.name for fv in store.list_feature_views()} >= set(schema.SOURCE_NAMES)
    bills = pq.read_table(snapshot_path(snapshot_data_dir, "bill")).to_pandas()
    latest = bills.sort_values(schema.TIMESTAMP_COLUMN).groupby(schema.ENTITY_KEY).tail(1).head(20)
    users = latest[schema.ENTITY_KEY].tolist()
    response = store.get_online_features(
        features=schema.feature_refs(), entity_rows=[{schema.ENTITY_KEY: u} for u in users]
    ).to_dict()
    for i, (_, row) in enumerate(latest.iterrows()):
        assert list(response["bill_merchant"][i]) == list(row["bill_merchant"])
        assert list(response["bill_ts"][i]) == list(row["bill_ts"])
