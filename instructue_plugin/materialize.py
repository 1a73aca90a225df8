"""Materialize embeddings for named instructions: compute them once, store them online, read them by key.

`materialize_embeddings(repo)` embeds every user of the feature repo under every instruction of
`instructions.yaml` and writes the vectors to the online store (`store.write_to_online_store`) keyed by
(`user_id`, `instruction_id`), plus an offline copy that is the view's batch source.

How it reads the users, and why the offline store:
1. Users are enumerated from the six views' batch sources through the offline store's
   `pull_latest_from_table_or_query` (what `feast materialize` itself runs, so it works on any offline store):
   one row per user and view, with that row's snapshot time. A user's reading time is their newest snapshot.
2. Their features come from `get_historical_features` at that time, batch by batch: each view's latest row,
   which is what the online store holds after `feast materialize`, so the stored vectors equal what the
   on-read view `user_embedding` returns. Reading offline needs no prior `feast materialize`, reads in bulk
   (one join per batch rather than a key lookup per user), and scales with the offline store.
   (The views never expire: each view's newest row is joined however old it is.)

Resume state (`<repo>/data/materialize_state.json`, written atomically after every batch), per instruction:
the model's fingerprint (hash of its export manifest, or of its config and weights), the variant served
(INSTRUCTUE_MODEL_VARIANT), the instruction text's hash, the users' fingerprint (ids and reading times), the
data's fingerprint (size and modification time of the six views' snapshot files), the batch size, and the number
of batches done. A rerun continues each instruction where it stopped; when all match and are complete it writes
nothing and says so; a changed model, variant, text, batch size or data restarts that instruction from its first
batch (its earlier offline copy is removed only once the model has loaded). Rows of an instruction removed from
the file stay in the online store until overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from . import model_identity_files, schema, settings
from .errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

VIEW_NAME = "user_embedding_materialized"
INSTRUCTION_KEY = "instruction_id"
EMBEDDING_FEATURE = "embedding"
INSTRUCTIONS_FILE = "instructions.yaml"
REPO_DATA_FOLDER = "data"  # derived files of the repo (git-ignored)
STATE_FILE = "materialize_state.json"
STATE_FORMAT = "instructue-materialize-state/1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


# ----- the instructions file ---------------------------------------------------------------------------


class Instruction(BaseModel):
    """A named instruction: its id is the online key, its text goes to the model ("" = general)."""

    model_config = ConfigDict(extra="forbid")

    # Also a folder name of the offline copy: it starts with a letter or digit, so never "." or "..".
    id: StrictStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    text: StrictStr
    description: StrictStr = ""


class InstructionsFile(BaseModel):
    """The YAML file: `instructions:` followed by a list of `{id, text, description}`."""

    model_config = ConfigDict(extra="forbid")

    instructions: list[Instruction] = Field(min_length=1)

    @field_validator("instructions")
    @classmethod
    def _unique_ids(cls, values: list[Instruction]) -> list[Instruction]:
        seen: set[str] = set()
        for value in values:
            if value.id in seen:
                raise ValueError(f"duplicate id {value.id!r}: every instruction needs its own id")
            seen.add(value.id)
        return values


def load_instructions(path: Path) -> list[Instruction]:
    """Read and validate an instructions file.

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks the format (the message says where).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no instructions file at {path}; pass --instructions FILE or create {INSTRUCTIONS_FILE}")
    try:
        payload = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    try:
        return InstructionsFile.model_validate(payload).instructions
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']} (got {e.get('input')!r})"
            for e in error.errors()
        )
        raise ConfigError(
            f"{path} is not a valid instructions file: {problems}. Expected `instructions:` followed by a list "
            "of entries with a unique `id` (letters, digits, _ . -) and a string `text`"
        ) from error


# ----- fingerprints and the resume state --------------------------------------------------------------


def model_fingerprint(model_path: Path) -> str:
    """Identity of a model folder: the export manifest's hash (it lists file hashes), else config and weights.

    Raises:
        ModelNotFoundError: nothing at `model_path`.
    """
    folder = Path(model_path)
    if not folder.exists():
        raise ModelNotFoundError(
            f"no InstructUE model at {folder}; set INSTRUCTUE_MODEL (or pass the model folder) to a trained "
            "model (`instructue train`) or an export (`instructue export`)"
        )
    digest = hashlib.sha256()
    for file in model_identity_files(folder):
        digest.update(file.name.encode())
        if file.exists():
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _users_fingerprint(users: pa.Table) -> str:
    digest = hashlib.sha256()
    digest.update(users.column(schema.ENTITY_KEY).to_numpy().astype(np.int64).tobytes())
    digest.update(users.column(schema.TIMESTAMP_COLUMN).cast(pa.int64()).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _sources_fingerprint(sources: dict[str, Path | None]) -> str:
    """Identity of the six views' batch data: name, size and modification time of every file of each file source.

    A source that is not a local file or folder (e.g. a warehouse table) adds only its name: a change in its
    rows that keeps the users and their newest snapshot times is not seen (pass `force`).
    """
    digest = hashlib.sha256()
    for name, path in sources.items():
        digest.update(name.encode())
        if path is None or not path.exists():
            continue
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                status = file.stat()
                digest.update(f"{file.relative_to(path.parent)}:{status.st_size}:{status.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _local_source_paths(store: FeatureStore, repo: Path) -> dict[str, Path | None]:
    """Each of the six views' batch source as a local path (relative ones against the repo); None if not local."""
    paths: dict[str, Path | None] = {}
    for name in schema.SOURCE_NAMES:
        location = getattr(store.get_feature_view(name).batch_source, "path", None)
        if not location or "://" in location:  # a warehouse table or a remote URI
            paths[name] = None
            continue
        path = Path(location)
        paths[name] = path if path.is_absolute() else repo / path
    return paths


def _require_local_sources(sources: dict[str, Path | None], repo: Path) -> None:
    """Refuse, naming them, local batch sources that do not exist (the offline store fails with its own trace)."""
    missing = {name: path for name, path in sources.items() if path and not path.exists()}
    if missing:
        listed = ", ".join(f"{name} ({path})" for name, path in missing.items())
        raise ConfigError(
            f"the batch sources of {repo} are missing: {listed}; `feast apply` points them at the snapshot tables "
            "of the data folder INSTRUCTUE_DATA named then: build them there, or apply again with the right folder"
        )


def _online_store_fingerprint(store: FeatureStore) -> str:
    """Identity of the online store the rows go to (its settings, hashed): another store is written afresh."""
    config = store.config.online_store
    settings_of = config.model_dump(mode="json") if hasattr(config, "model_dump") else {"repr": repr(config)}
    return hashlib.sha256(json.dumps(settings_of, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_path(repo_path: Path) -> Path:
    """Where the resume state of a repo lives."""
    return Path(repo_path) / REPO_DATA_FOLDER / STATE_FILE


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON: ignored, every instruction is recomputed", path)
        return {}
    if not isinstance(payload, dict) or not isinstance(payload.get("instructions", {}), dict):
        logger.warning("%s is not a state file (no object of instructions): ignored", path)
        return {}
    if payload.get("format") != STATE_FORMAT:
        logger.warning("%s has format %r, not %r: ignored", path, payload.get("format"), STATE_FORMAT)
        return {}
    return dict(payload.get("instructions", {}))


def _write_state(path: Path, instructions: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": STATE_FORMAT, "instructions": instructions}, indent=2, sort_keys=True))
    os.replace(tmp, path)  # atomic: an interrupted write leaves the previous state


# ----- the run ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchDone:
    """Passed to `on_batch` after a batch of one instruction is stored."""

    instruction_id: str
    batch: int  # 0-based
    batches: int
    rows_written: int


@dataclass
class MaterializeSummary:
    """What a run did: per instruction, rows written; which were already up to date or resumed."""

    users: int
    batches: int
    written: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)  # instruction id -> batches already done
    no_data: int = 0  # users with no feature row at their reading time (nothing stored for them)
    seconds: float = 0.0

    @property
    def nothing_to_do(self) -> bool:
        """True when every instruction was already complete for this model and data."""
        return not self.written

    def describe(self) -> str:
        """One line for people."""
        if self.nothing_to_do:
            return f"nothing to do: {len(self.up_to_date)} instructions already materialized for {self.users} users"
        parts = [f"{iid}: {rows} rows" for iid, rows in self.written.items()]
        resumed = f", resumed {', '.join(f'{k} at batch {v}' for k, v in self.resumed.items())}" if self.resumed else ""
        fresh = f", up to date: {', '.join(self.up_to_date)}" if self.up_to_date else ""
        return f"materialized {'; '.join(parts)} ({self.users} users, {self.seconds:.1f} s{resumed}{fresh})"


def materialize_embeddings(
    repo_path: Path,
    *,
    instructions_file: Path | None = None,
    model_path: Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
    force: bool = False,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> MaterializeSummary:
    """Embed every user under every named instruction and store the vectors online, resumably.

    Args:
        repo_path: the applied feature repository (`feast apply` done).
        instructions_file: the named instructions (default: `<repo>/instructions.yaml`).
        model_path: model or export folder (default: `settings.model_dir()`, i.e. INSTRUCTUE_MODEL).
        batch_size: users per batch: one offline read, then one embed and one online write per instruction;
            the unit of progress and of resumption.
        progress: draw a tqdm bar (the CLI turns it off for quiet runs).
        force: ignore the resume state and recompute everything.
        on_batch: called after each stored batch (progress hooks; tests use it to interrupt a run).

    Returns:
        A `MaterializeSummary`; `summary.nothing_to_do` when every instruction was already complete.

    Raises:
        ConfigError: bad instructions file, bad batch size, or the repo is not applied.
        ModelNotFoundError, CorruptModelError, SchemaMismatchError: the model cannot be used.
    """
    from tqdm.auto import tqdm

    from .feast_store import open_store
    from .feast_udf import embed_valid_rows, load_embedder

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    repo = Path(repo_path).expanduser().resolve()
    store = open_store(repo)  # first: a folder that is no feature repository is told so, not what else it lacks
    instructions = load_instructions(instructions_file or repo / INSTRUCTIONS_FILE)
    model_folder = Path(model_path).expanduser().resolve() if model_path is not None else settings.model_dir()
    model_id = model_fingerprint(model_folder)
    offline_dir = _offline_copy_dir(store)
    sources = _local_source_paths(store, repo)
    _require_local_sources(sources, repo)
    users = latest_snapshot_times(store)
    if users.num_rows == 0:
        raise ConfigError(
            f"the six views of {repo} have no rows; check the snapshot tables INSTRUCTUE_DATA named at `feast apply`"
        )
    batches = math.ceil(users.num_rows / batch_size)
    summary = MaterializeSummary(users=users.num_rows, batches=batches)

    # Where each instruction starts: its recorded progress if nothing it depends on changed, else batch 0.
    path = state_path(repo)
    state = {} if force else _read_state(path)
    users_id = _users_fingerprint(users)
    data_id = _sources_fingerprint(sources)
    online_id = _online_store_fingerprint(store)
    start: dict[str, int] = {}
    stale: list[str] = []
    for instruction in instructions:
        identity = {
            "model": model_id,
            "variant": settings.model_variant(),
            "text_sha256": _text_hash(instruction.text),
            "users": users_id,
            "data": data_id,
            "online_store": online_id,
            "batch_size": batch_size,
            "batches": batches,
        }
        recorded = state.get(instruction.id, {})
        if all(recorded.get(k) == v for k, v in identity.items()):
            start[instruction.id] = int(recorded.get("batches_done", 0))
        else:
            start[instruction.id] = 0
            if recorded:
                changed = [k for k, v in identity.items() if recorded.get(k) != v]
                logger.info("instruction %r: %s changed, recomputing", instruction.id, ", ".join(changed))
            stale.append(instruction.id)
        state[instruction.id] = {**identity, "batches_done": start[instruction.id]}
        if start[instruction.id] >= batches:
            summary.up_to_date.append(instruction.id)
        elif start[instruction.id] > 0:
            summary.resumed[instruction.id] = start[instruction.id]
    pending = [i for i in instructions if start[i.id] < batches]
    if not pending:
        summary.seconds = time.perf_counter() - started
        logger.info("%s", summary.describe())
        return summary

    embedder = load_embedder(model_folder)  # before removing anything: a model that fails to load keeps the old rows
    for instruction_id in stale:
        shutil.rmtree(offline_dir / instruction_id, ignore_errors=True)
    summary.written = {i.id: 0 for i in pending}
    computed_at = datetime.now(UTC)
    work = sum(batches - start[i.id] for i in pending)
    with tqdm(total=work, desc="materialize", unit="batch", disable=not progress) as bar:
        for batch in range(min(start[i.id] for i in pending), batches):
            todo = [i for i in pending if start[i.id] <= batch]
            rows = users.slice(batch * batch_size, batch_size)
            features = _read_features(store, rows)
            for instruction in todo:
                vectors = embed_valid_rows(embedder, features, instruction.text, user_ids=features[schema.ENTITY_KEY])
                stored = _store_batch(
                    store, offline_dir, features, vectors, instruction.id, batch=batch, computed_at=computed_at
                )
                summary.written[instruction.id] += stored
                if instruction is todo[0]:
                    summary.no_data += rows.num_rows - stored
                state[instruction.id]["batches_done"] = batch + 1
                state[instruction.id]["updated_at"] = computed_at.isoformat()
                _write_state(path, state)
                bar.update(1)
                if on_batch is not None:
                    on_batch(BatchDone(instruction.id, batch, batches, stored))
    summary.seconds = time.perf_counter() - started
    if summary.no_data:
        logger.warning("%d users had no feature row at their latest snapshot time: nothing stored", summary.no_data)
    logger.info("%s", summary.describe())
    return summary


def latest_snapshot_times(store: FeatureStore) -> pa.Table:
    """Every user of the six views with their newest snapshot time: (`user_id`, `event_timestamp`), by id.

    Reads the views' batch sources through the offline store's `pull_latest_from_table_or_query`.
    """
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    offline_store = get_offline_store_from_config(store.config.offline_store)
    tables = []
    for name in schema.SOURCE_NAMES:
        source = store.get_feature_view(name).batch_source
        job = offline_store.pull_latest_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=[schema.ENTITY_KEY],
            feature_name_columns=[],
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            start_date=_EPOCH,
            end_date=_FAR_FUTURE,
        )
        table = job.to_arrow()
        tables.append(
            pa.table(
                {
                    schema.ENTITY_KEY: table.column(schema.ENTITY_KEY).cast(pa.int64()),
                    schema.TIMESTAMP_COLUMN: table.column(source.timestamp_field).cast(pa.timestamp("us", tz="UTC")),
                }
            )
        )
    latest = pa.concat_tables(tables).group_by(schema.ENTITY_KEY).aggregate([(schema.TIMESTAMP_COLUMN, "max")])
    latest = latest.rename_columns([schema.ENTITY_KEY, schema.TIMESTAMP_COLUMN])
    return latest.sort_by(schema.ENTITY_KEY)


def _read_features(store: FeatureStore, rows: pa.Table) -> dict[str, list[Any]]:
    """The six views' features of `rows` (user, time) as of each time, as a dict of lists in user order."""
    entity_df = rows.to_pandas()
    table = store.get_historical_features(entity_df=entity_df, features=schema.feature_refs()).to_arrow()
    return table.sort_by(schema.ENTITY_KEY).to_pydict()


def _store_batch(
    store: FeatureStore,
    offline_dir: Path,
    features: dict[str, list[Any]],
    vectors: np.ndarray,
    instruction_id: str,
    *,
    batch: int,
    computed_at: datetime,
) -> int:
    """Write one batch's embeddings online and to the offline copy; returns the rows stored (NaN rows skipped)."""
    keep = ~np.isnan(vectors).any(axis=1)
    user_ids = np.asarray(features[schema.ENTITY_KEY], dtype=np.int64)[keep]
    kept = vectors[keep]
    if len(user_ids) == 0:
        return 0
    table = pa.table(
        {
            schema.ENTITY_KEY: pa.array(user_ids, pa.int64()),
            INSTRUCTION_KEY: pa.array([instruction_id] * len(user_ids), pa.string()),
            EMBEDDING_FEATURE: pa.array(list(kept), pa.list_(pa.float32())),
            schema.TIMESTAMP_COLUMN: pa.array([computed_at] * len(user_ids), pa.timestamp("us", tz="UTC")),
        }
    )
    store.write_to_online_store(VIEW_NAME, df=table.to_pandas())
    part = offline_dir / instruction_id / f"part-{batch:06d}.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    staging = part.with_suffix(".tmp")  # outside the view's `*/*.parquet`: a crash leaves no half-written part
    pq.write_table(table, staging)
    os.replace(staging, part)
    return len(user_ids)


def _offline_copy_dir(store: FeatureStore) -> Path:
    """The folder of the view's batch source (`<folder>/*/*.parquet`): one sub-folder per instruction id.

    Raises:
        ConfigError: the view is not registered (the repo was not applied).
    """
    from feast.errors import FeatureViewNotFoundException

    try:
        view = store.get_feature_view(VIEW_NAME)
    except FeatureViewNotFoundException:
        raise ConfigError(
            f"the feature view {VIEW_NAME!r} is not registered in {store.repo_path}; run `feast apply` there first"
        ) from None
    pattern = Path(view.batch_source.path)
    if pattern.parts[-2:] != ("*", "*.parquet"):
        raise ConfigError(
            f"the batch source of {VIEW_NAME!r} is {pattern}; materialize writes <folder>/<instruction_id>/"
            "part-N.parquet, so declare it as <folder>/*/*.parquet (see feast_repo/embeddings.py)"
        )
    return pattern.parent.parent
