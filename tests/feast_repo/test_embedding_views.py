"""The embedding views through the real feast CLI, SDK and feature server, with a tiny model built in code.

`user_embedding` (on read, any instruction) and `user_embedding_materialized` (named instructions, written by
`materialize_embeddings`) must agree with each other and with the runtime's direct `embed` of the same
feature rows; historical reads must embed the snapshot rows valid at each entity timestamp.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import instructue_plugin
from instructue_plugin import feast_udf, schema
from instructue_plugin.config import config_for_preset
from instructue_plugin.errors import ConfigError, DataValidationError, ModelNotFoundError
from instructue_plugin.feast_definitions import snapshot_path
from instructue_plugin.materialize import _offline_copy_dir, load_instructions, materialize_embeddings, state_path
from instructue_plugin.model import InstructUEModel
from tests.feast_repo.conftest import FEAST, REPO_SOURCE, apply_repo_copy, run_feast, write_snapshot_dataset
from tests.helpers import feature_rows

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

USERS = 60  # fewer than the other Feast tests: every read here also runs the model
UNKNOWN_USER = 999_999_999
FUND = "Represent this user for predicting fund purchases in the next 30 days."
CHURN = "Represent this user for predicting churn in the next 30 days."
ON_READ = "user_embedding:embedding"
MATERIALIZED = "user_embedding_materialized:embedding"
# Rows embedded alone or in different batches differ by float rounding only (padding changes the kernels).
ATOL = 1e-5
SERVER_START_S = 120


# ----- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snapshot_dataset(tmp_path_factory.mktemp("instructue_data"), users=USERS, seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    InstructUEModel.create(config_for_preset("tiny")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory: pytest.TempPathFactory, snapshot_data_dir: Path) -> Path:
    """The repo applied and its six views materialized while INSTRUCTUE_MODEL names no model at all."""
    absent = tmp_path_factory.mktemp("no_model") / "absent"
    return apply_repo_copy(
        tmp_path_factory.mktemp("feast"), data_dir=snapshot_data_dir, env={"INSTRUCTUE_MODEL": str(absent)}
    )


@pytest.fixture(scope="module")
def model_env(model_dir: Path):
    """INSTRUCTUE_MODEL names the tiny model for the on-read view (run in this process by the SDK)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSTRUCTUE_MODEL", str(model_dir))
        yield model_dir


@pytest.fixture(scope="module")
def embedder(model_dir: Path):
    """A separate instance from the view's, so the comparisons do not share caches."""
    return instructue_plugin.load(model_dir)


@pytest.fixture(scope="module")
def users(snapshot_data_dir: Path) -> list[int]:
    ids: set[int] = set()
    for name in schema.SOURCE_NAMES:
        ids |= set(pq.read_table(snapshot_path(snapshot_data_dir, name), columns=[schema.ENTITY_KEY])[0].to_pylist())
    return sorted(ids)


@pytest.fixture(scope="module")
def instructions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("instructions") / "instructions.yaml"
    _write_instructions(path, {"fund": FUND, "general": ""})
    return path


@pytest.fixture(scope="module")
def materialized(applied_repo: Path, model_dir: Path, instructions_file: Path):
    return materialize_embeddings(
        applied_repo, instructions_file=instructions_file, model_path=model_dir, batch_size=16, progress=False
    )


def _write_instructions(path: Path, texts: dict[str, str]) -> None:
    path.write_text(yaml.safe_dump({"instructions": [{"id": k, "text": v} for k, v in texts.items()]}))


# ----- reading helpers -----------------------------------------------------------------------------------


def on_read(store, users: list[int], instruction: str | None) -> list:
    rows = [{schema.ENTITY_KEY: u, "instruction": instruction} for u in users]
    return store.get_online_features(features=[ON_READ], entity_rows=rows).to_dict()["embedding"]


def materialized_read(store, users: list[int], instruction_id: str) -> list:
    rows = [{schema.ENTITY_KEY: u, "instruction_id": instruction_id} for u in users]
    return store.get_online_features(features=[MATERIALIZED], entity_rows=rows).to_dict()["embedding"]


def online_rows(store, users: list[int]) -> dict[str, list]:
    rows = [{schema.ENTITY_KEY: u} for u in users]
    return store.get_online_features(features=schema.feature_refs(), entity_rows=rows).to_dict()


def as_matrix(values: list, dim: int) -> np.ndarray:
    """Feast values (float lists or None) as a (rows, dim) float32 matrix with NaN rows for None."""
    return np.stack([np.full(dim, np.nan, np.float32) if v is None else np.asarray(v, np.float32) for v in values])


def assert_vectors(got: list, want: np.ndarray, where: str) -> None:
    assert len(got) == len(want), where
    for i, (vector, expected) in enumerate(zip(got, want, strict=True)):
        if np.isnan(expected).any():
            assert vector is None, f"{where}, row {i}: expected null"
            continue
        assert vector is not None, f"{where}, row {i}: null"
        np.testing.assert_allclose(
            np.asarray(vector, dtype=np.float32), expected, atol=ATOL, err_msg=f"{where}, row {i}"
        )


# ----- apply, fake inputs, imports -----------------------------------------------------------------------


def test_apply_registers_both_embedding_views(store) -> None:
    odfv = store.get_on_demand_feature_view("user_embedding")
    assert [f.name for f in odfv.features] == ["embedding"]
    assert [f.name for f in next(iter(odfv.source_request_sources.values())).schema] == ["instruction"]
    assert sorted(odfv.source_feature_view_projections) == sorted(schema.SOURCE_NAMES)
    view = store.get_feature_view("user_embedding_materialized")
    assert [f.name for f in view.features] == ["embedding"]
    assert sorted(view.join_keys) == ["instruction_id", "user_id"]


def test_feast_sample_input_gets_a_placeholder_without_a_model(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INSTRUCTUE_MODEL", str(tmp_path / "absent"))
    sample = {
        "bill_merchant": [["hello world"]],
        "bill__bill_merchant": [["hello world"]],
        "instruction": ["hello world"],
    }
    assert feast_udf.embed_on_read(sample) == {"embedding": [[0.0]]}
    with pytest.raises(DataValidationError, match="user_id"):
        feast_udf.embed_on_read({"bill_merchant": [["a"]], "instruction": [FUND]})


def test_importing_the_feast_modules_loads_no_torch() -> None:
    code = (
        "import sys, instructue_plugin.feast_udf, instructue_plugin.feast_store, instructue_plugin.materialize; "
        "heavy = [m for m in ('torch', 'transformers', 'feast') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_first_on_read_without_a_model_names_instructue_model(store, users, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INSTRUCTUE_MODEL", str(tmp_path / "absent"))
    with pytest.raises(ModelNotFoundError, match="INSTRUCTUE_MODEL") as error:
        on_read(store, users[:2], FUND)
    assert str(tmp_path / "absent") in str(error.value)


# ----- on read -------------------------------------------------------------------------------------------


def test_on_read_follows_the_instruction_and_matches_direct_embedding(store, model_env, embedder, users) -> None:
    features = online_rows(store, users)
    by_instruction = {}
    for instruction in (FUND, CHURN):
        got = on_read(store, users, instruction)
        assert_vectors(got, embedder.embed(features, instruction), where=f"on read, {instruction[:30]}")
        by_instruction[instruction] = np.asarray([v for v in got if v is not None])
    assert len(by_instruction[FUND]) >= USERS - 2, "most users must have an embedding"
    gap = np.abs(by_instruction[FUND] - by_instruction[CHURN]).max(axis=1)
    assert (gap > 1e-3).all(), "two instructions gave the same embedding"


def test_unknown_user_reads_null_beside_known_users(store, model_env, materialized, users) -> None:
    known = users[:2]
    ids = [known[0], UNKNOWN_USER, known[1]]
    for got, alone in (
        (on_read(store, ids, FUND), on_read(store, known, FUND)),
        (materialized_read(store, ids, "fund"), materialized_read(store, known, "fund")),
    ):
        assert got[1] is None
        np.testing.assert_allclose(got[0], alone[0], atol=ATOL)
        np.testing.assert_allclose(got[2], alone[1], atol=ATOL)


def test_a_malformed_user_reads_null_beside_well_formed_users(embedder, caplog) -> None:
    rows = feature_rows(3, seed=4)
    rows["bill_amount"] = [list(v) if v is not None else None for v in rows["bill_amount"]]
    assert rows["bill_amount"][1]
    rows["bill_amount"][1] = rows["bill_amount"][1][:-1]  # one amount fewer than times
    with caplog.at_level(logging.ERROR, logger="instructue_plugin.feast_udf"):
        vectors = feast_udf.embed_valid_rows(embedder, rows, FUND, user_ids=[7, 8, 9])
    assert np.isnan(vectors[1]).all() and "user 8" in caplog.text and "bill_amount" in caplog.text
    well_formed = {name: [values[0], values[2]] for name, values in rows.items()}
    np.testing.assert_allclose(vectors[[0, 2]], embedder.embed(well_formed, FUND), atol=1e-6)
    with pytest.raises(DataValidationError, match="no row has well-formed features; user 8"):
        feast_udf.embed_valid_rows(embedder, {name: [values[1]] for name, values in rows.items()}, FUND, user_ids=[8])
    with pytest.raises(DataValidationError, match="instructions"):  # not a row's fault: raised as before
        feast_udf.embed_valid_rows(embedder, rows, [FUND], user_ids=[7, 8, 9])


def test_empty_instruction_is_general_and_long_instructions_are_cut(store, model_env, embedder, users) -> None:
    some = users[:8]
    features = online_rows(store, some)
    general = embedder.embed(features, None)
    assert_vectors(on_read(store, some, ""), general, where='instruction ""')
    assert_vectors(on_read(store, some, None), general, where="instruction None")

    # 10,000 characters: the runtime keeps the first `max_instruction_tokens` tokens, so two long texts that
    # share their first 1,000 characters embed the same, and equal the direct embedding of either.
    first = (FUND + " ") * 150
    second = first[:1000] + "x" * 9000
    first = first[:10_000]
    assert len(first) == len(second) == 10_000
    cut = on_read(store, some, first)
    assert_vectors(cut, embedder.embed(features, first), where="10,000-character instruction")
    assert_vectors(on_read(store, some, second), as_matrix(cut, embedder.dim), where="same first tokens")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(cut), axis=1), 1.0, atol=1e-5)


# ----- materialized ----------------------------------------------------------------------------------------


def test_materialized_equals_on_read(store, model_env, embedder, materialized, users) -> None:
    known = [u for u, v in zip(users, on_read(store, users, ""), strict=True) if v is not None]
    assert materialized.written == {"fund": len(known), "general": len(known)}
    for instruction_id, text in (("fund", FUND), ("general", "")):
        want = as_matrix(on_read(store, users, text), embedder.dim)
        assert_vectors(materialized_read(store, users, instruction_id), want, where=f"materialized {instruction_id}")


def test_rerun_with_nothing_changed_writes_nothing(applied_repo, model_dir, instructions_file, materialized) -> None:
    again = materialize_embeddings(
        applied_repo, instructions_file=instructions_file, model_path=model_dir, batch_size=16, progress=False
    )
    assert again.nothing_to_do
    assert again.written == {}
    assert sorted(again.up_to_date) == ["fund", "general"]
    assert "nothing to do" in again.describe()


def test_rebuilt_snapshots_with_the_same_times_are_not_up_to_date(
    applied_repo, model_dir, instructions_file, snapshot_data_dir, materialized
) -> None:
    options = {"instructions_file": instructions_file, "model_path": model_dir, "batch_size": 16, "progress": False}
    bill = snapshot_path(snapshot_data_dir, "bill")
    status = bill.stat()  # a rebuild keeps the users and their snapshot times but rewrites the file
    os.utime(bill, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    rebuilt = materialize_embeddings(applied_repo, **options)
    assert not rebuilt.nothing_to_do and rebuilt.written == materialized.written
    assert materialize_embeddings(applied_repo, **options).nothing_to_do


def test_changed_variant_is_not_up_to_date_and_a_model_that_fails_to_load_keeps_the_rows(
    applied_repo, store, model_dir, embedder, instructions_file, materialized, users, monkeypatch
) -> None:
    offline_copy = _offline_copy_dir(store) / "fund"
    files_before = sorted(offline_copy.rglob("*.parquet"))
    before = as_matrix(materialized_read(store, users, "fund"), embedder.dim)
    monkeypatch.setenv("INSTRUCTUE_MODEL_VARIANT", "int8")  # not servable from a PyTorch model folder
    with pytest.raises(ConfigError, match="int8"):  # the variant is part of the identity: not "nothing to do"
        materialize_embeddings(
            applied_repo, instructions_file=instructions_file, model_path=model_dir, batch_size=16, progress=False
        )
    assert files_before and sorted(offline_copy.rglob("*.parquet")) == files_before
    assert_vectors(materialized_read(store, users, "fund"), before, where="after the failed load")


def test_interrupted_run_resumes_where_it_stopped(
    applied_repo, store, model_env, model_dir, embedder, instructions_file, materialized, users
) -> None:
    before = {iid: as_matrix(materialized_read(store, users, iid), embedder.dim) for iid in ("fund", "general")}
    stored: list[int] = []

    def stop_after_three(done) -> None:
        stored.append(done.rows_written)
        if len(stored) == 3:
            raise KeyboardInterrupt

    options = {"instructions_file": instructions_file, "model_path": model_dir, "batch_size": 16, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        materialize_embeddings(applied_repo, force=True, on_batch=stop_after_three, **options)
    state = json.loads(state_path(applied_repo).read_text())["instructions"]
    assert state["fund"]["batches_done"] == 2 and state["general"]["batches_done"] == 1

    resumed = materialize_embeddings(applied_repo, **options)
    assert resumed.resumed == {"fund": 2, "general": 1}
    total = materialized.written["fund"]
    assert resumed.written["fund"] + stored[0] + stored[2] == total
    assert resumed.written["general"] + stored[1] == total
    for iid, vectors in before.items():
        assert_vectors(materialized_read(store, users, iid), vectors, where=iid)


def test_another_online_store_or_a_damaged_state_file_recomputes(
    applied_repo, model_dir, instructions_file, materialized, caplog
) -> None:
    options = {"instructions_file": instructions_file, "model_path": model_dir, "batch_size": 16, "progress": False}
    path = state_path(applied_repo)
    payload = json.loads(path.read_text())
    payload["instructions"]["fund"]["online_store"] = "written to another online store"
    path.write_text(json.dumps(payload))
    summary = materialize_embeddings(applied_repo, **options)
    assert list(summary.written) == ["fund"] and summary.up_to_date == ["general"]
    path.write_text("[]")
    with caplog.at_level(logging.WARNING, logger="instructue_plugin.materialize"):
        summary = materialize_embeddings(applied_repo, **options)
    assert "not a state file" in caplog.text and sorted(summary.written) == ["fund", "general"]
    assert materialize_embeddings(applied_repo, **options).nothing_to_do


def test_changed_instruction_text_recomputes_only_that_instruction(
    applied_repo, store, model_env, model_dir, embedder, tmp_path: Path, materialized, users
) -> None:
    changed = tmp_path / "instructions.yaml"
    _write_instructions(changed, {"fund": CHURN, "general": ""})
    summary = materialize_embeddings(
        applied_repo, instructions_file=changed, model_path=model_dir, batch_size=16, progress=False
    )
    assert list(summary.written) == ["fund"] and summary.up_to_date == ["general"]
    want = as_matrix(on_read(store, users, CHURN), embedder.dim)
    assert_vectors(materialized_read(store, users, "fund"), want, where="fund after its text changed")


# ----- offline ---------------------------------------------------------------------------------------------


def test_historical_embeddings_are_point_in_time_correct(store, model_env, embedder, snapshot_data_dir) -> None:
    tables = {name: pq.read_table(snapshot_path(snapshot_data_dir, name)).to_pylist() for name in schema.SOURCE_NAMES}
    profile_users: dict[int, list[datetime]] = {}
    for row in tables[schema.PROFILE.name]:
        profile_users.setdefault(row[schema.ENTITY_KEY], []).append(row[schema.TIMESTAMP_COLUMN])
    cases = []  # (user, when, instruction)
    for k, (user, times) in enumerate(sorted(profile_users.items())[:12]):
        times.sort()
        cases.append((user, times[0] + (times[1] - times[0]) / 2, FUND if k % 2 else ""))
        cases.append((user, times[-1], CHURN))
    cases.append((UNKNOWN_USER, cases[0][1], FUND))
    entity_df = pd.DataFrame(
        {
            schema.ENTITY_KEY: [c[0] for c in cases],
            schema.TIMESTAMP_COLUMN: pd.to_datetime([c[1] for c in cases], utc=True),
            "instruction": [c[2] for c in cases],
            "row_id": range(len(cases)),
        }
    )
    table = store.get_historical_features(entity_df=entity_df, features=[ON_READ]).to_arrow()
    got = {row["row_id"]: row["embedding"] for row in table.to_pylist()}

    expected_rows = {column: [] for column in schema.feature_columns()}
    for user, when, _ in cases:
        for name in schema.SOURCE_NAMES:
            current = [r for r in tables[name] if r[schema.ENTITY_KEY] == user and r[schema.TIMESTAMP_COLUMN] <= when]
            latest = max(current, key=lambda r: r[schema.TIMESTAMP_COLUMN]) if current else None
            source = schema.PROFILE if name == schema.PROFILE.name else schema.SEQUENCE_BY_NAME[name]
            for column in source.feature_columns:
                expected_rows[column].append(None if latest is None else latest[column])
    want = embedder.embed(expected_rows, [c[2] for c in cases])
    assert_vectors([got[i] for i in range(len(cases))], want, where="historical")
    # Between two snapshots the earlier one counts: its embedding differs from the latest one's.
    latest = embedder.embed(online_rows(store, [c[0] for c in cases[:-1]]), [c[2] for c in cases[:-1]])
    assert any(not np.allclose(want[i], latest[i], atol=1e-3) for i in range(0, len(cases) - 1, 2))


# ----- HTTP ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _served_vectors(response: dict) -> list:
    names = response["metadata"]["feature_names"]
    return response["results"][names.index("embedding")]["values"]


@contextlib.contextmanager
def feast_server(repo: Path, *, env: dict[str, str], log: Path):
    """`feast serve` on a free loopback port, inside `repo`; yields its base URL and stops it on exit."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [FEAST, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
            cwd=repo,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so its workers stop with it
        )
        try:
            deadline = time.monotonic() + SERVER_START_S
            while not _healthy(base):
                if server.poll() is not None:
                    pytest.fail(f"feast serve exited ({server.returncode}): {log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"feast serve did not answer on {base} within {SERVER_START_S} s")
                time.sleep(0.5)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_feast_serve_returns_the_sdk_vectors(
    applied_repo, store, model_env, model_dir, materialized, users, tmp_path: Path
) -> None:
    ids = [*users[:3], UNKNOWN_USER]
    with feast_server(applied_repo, env={"INSTRUCTUE_MODEL": str(model_dir)}, log=tmp_path / "serve.log") as base:
        served_on_read = _served_vectors(
            _post(
                f"{base}/get-online-features",
                {"features": [ON_READ], "entities": {"user_id": ids, "instruction": [FUND] * 4}},
            )
        )
        served_materialized = _served_vectors(
            _post(
                f"{base}/get-online-features",
                {"features": [MATERIALIZED], "entities": {"user_id": ids, "instruction_id": ["fund"] * 4}},
            )
        )

    for served, sdk in (
        (served_on_read, on_read(store, ids, FUND)),
        (served_materialized, materialized_read(store, ids, "fund")),
    ):
        assert served[3] is None and sdk[3] is None
        for i in range(3):
            np.testing.assert_allclose(served[i], sdk[i], atol=ATOL)


def test_bench_online_reports_each_case(applied_repo, model_env, materialized, instructions_file, tmp_path) -> None:
    from training.bench_online import CASES, ROW_COUNTS, format_table, run

    report_path = tmp_path / "bench-online.json"
    report = run(applied_repo, report_path=report_path, repeats=3, instructions_file=instructions_file)
    assert json.loads(report_path.read_text()) == report
    assert sorted(report) == sorted(CASES)
    for case in CASES:
        assert sorted(report[case]) == sorted(str(rows) for rows in ROW_COUNTS)
        for figures in report[case].values():
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert "materialized" in format_table(report)


def test_bench_online_refuses_what_would_time_empty_reads(
    applied_repo, model_dir, instructions_file, snapshot_data_dir, tmp_path
) -> None:
    import shutil

    from training.bench_online import run

    report_path = tmp_path / "bench-online.json"
    with pytest.raises(ConfigError, match="no instruction 'nope'.*fund"):
        run(applied_repo, report_path=report_path, instruction_id="nope", instructions_file=instructions_file)
    with pytest.raises(ConfigError, match="repeats"):
        run(applied_repo, report_path=report_path, repeats=0, instructions_file=instructions_file)
    # Applied and its embeddings materialized (which needs no `feast materialize`), but the six views never loaded.
    repo = tmp_path / "feast_repo"
    shutil.copytree(REPO_SOURCE, repo, ignore=shutil.ignore_patterns("*.db", "data", "__pycache__"))
    run_feast(repo, "apply", data_dir=snapshot_data_dir)
    materialize_embeddings(
        repo, instructions_file=instructions_file, model_path=model_dir, batch_size=16, progress=False
    )
    with pytest.raises(ConfigError, match="six behaviour views.*feast materialize"):
        run(repo, report_path=report_path, repeats=3, instructions_file=instructions_file)
    assert not report_path.exists()


# ----- the instructions file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("instructions:\n  - {id: fund, text: a}\n  - {id: fund, text: b}\n", "duplicate id 'fund'"),
        ("instructions:\n  - {id: fund, text: 5}\n", "instructions.0.text"),
        ("instructions:\n  - {id: 'fund marketing', text: a}\n", "instructions.0.id"),
        ("instructions:\n  - {id: '..', text: a}\n", "instructions.0.id"),  # a folder name of the offline copy
        ("instructions:\n  - {id: '.', text: a}\n", "instructions.0.id"),
        ("instructions: []\n", "instructions"),
        ("- {id: fund, text: a}\n", "not a valid instructions file"),
        ("instructions: [\n", "not valid YAML"),
    ],
)
def test_bad_instructions_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "instructions.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_instructions(path)


def test_the_repo_instructions_file_is_valid() -> None:
    repo_file = Path(__file__).resolve().parents[2] / "feast_repo" / "instructions.yaml"
    instructions = {i.id: i.text for i in load_instructions(repo_file)}
    assert instructions["fund"] == FUND and instructions["churn"] == CHURN and instructions["general"] == ""


def test_materializing_into_a_folder_that_is_no_feature_repository_says_so(tmp_path: Path) -> None:
    (tmp_path / "instructions.yaml").write_text("instructions:\n  - {id: fund, text: a}\n")
    with pytest.raises(ConfigError, match="no feature_store.yaml in"):  # not the model or instructions it lacks
        materialize_embeddings(tmp_path, model_path=tmp_path / "no-model")


def test_materialize_names_a_snapshot_table_that_is_gone(tmp_path: Path, model_dir: Path) -> None:
    data = write_snapshot_dataset(tmp_path / "data", users=40)
    repo = apply_repo_copy(tmp_path, data_dir=data)
    gone = next(data.rglob("bill.parquet"))
    gone.unlink()
    with pytest.raises(ConfigError, match=rf"missing: bill \({gone}\)"):  # not the offline store's trace
        materialize_embeddings(repo, model_path=model_dir, progress=False)
