"""Online read latency of the feature repo, in process: `instructue bench online`.

Three cases, each read with `store.get_online_features` for 1 and for 32 users:
- `raw`: the six behaviour views (what an on-read embedding needs as input);
- `materialized`: `user_embedding_materialized:embedding` for one named instruction (a key lookup);
- `on_read`: `user_embedding:embedding` with the same instruction's text (reads the six views, then embeds).

The repo must be ready: applied, its six views materialized (`feast materialize`), and its named
instructions materialized (`instructue materialize`); the on-read case loads the model named by
INSTRUCTUE_MODEL. Each case first reads every user it will time once, at the same row count (registry
cache, model load, item-vector cache, torch's per-shape kernels), so the figures are steady-state latencies.
Result: `{CASE: {ROWS: {"p50_ms": ..., "p99_ms": ...}}}`, written as JSON to `report_path`.
Target (DESIGN §8): materialized p99 <= 5 ms for 1 row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from instructue_plugin import schema
from instructue_plugin.errors import ConfigError
from instructue_plugin.materialize import (
    INSTRUCTION_KEY,
    INSTRUCTIONS_FILE,
    VIEW_NAME,
    latest_snapshot_times,
    load_instructions,
)

logger = logging.getLogger(__name__)

ROW_COUNTS = (1, 32)
CASES = ("raw", "materialized", "on_read")


def run(
    repo_path: Path,
    *,
    report_path: Path,
    repeats: int = 200,
    instruction_id: str | None = None,
    instructions_file: Path | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Time online reads of the three cases at 1 and 32 rows and write the report.

    Args:
        repo_path: an applied and materialized feature repository.
        report_path: where the JSON report goes (e.g. `reports/bench-online.json`).
        repeats: timed reads per case and row count (p99 needs >= 100 to mean something).
        instruction_id: the named instruction to read (default: the first of the instructions file).
        instructions_file: the named instructions (default: `<repo>/instructions.yaml`).

    Returns:
        `{CASE: {ROWS: {"p50_ms": ..., "p99_ms": ...}}}` with ROWS as strings ("1", "32"), as in the JSON.

    Raises:
        ConfigError: `repeats` below 1, an unknown instruction id, the repo lacks users, or the six views or the
            instruction's embeddings are not materialized (the reads would time empty rows).
    """
    from instructue_plugin.feast_store import open_store

    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    repo = Path(repo_path).expanduser().resolve()
    instructions = {i.id: i for i in load_instructions(instructions_file or repo / INSTRUCTIONS_FILE)}
    if instruction_id is not None and instruction_id not in instructions:
        raise ConfigError(f"no instruction {instruction_id!r} in the instructions file; known: {sorted(instructions)}")
    instruction = instructions[instruction_id] if instruction_id else next(iter(instructions.values()))
    store = open_store(repo)
    user_ids = latest_snapshot_times(store).column(schema.ENTITY_KEY).to_pylist()
    if len(user_ids) < max(ROW_COUNTS):
        raise ConfigError(f"{repo} has {len(user_ids)} users; the benchmark reads up to {max(ROW_COUNTS)} at once")
    _check_materialized(store, user_ids[0], instruction.id)

    reads: dict[str, Callable[[list[int]], Any]] = {
        "raw": lambda users: store.get_online_features(
            features=schema.feature_refs(), entity_rows=[{schema.ENTITY_KEY: u} for u in users]
        ),
        "materialized": lambda users: store.get_online_features(
            features=[f"{VIEW_NAME}:embedding"],
            entity_rows=[{schema.ENTITY_KEY: u, INSTRUCTION_KEY: instruction.id} for u in users],
        ),
        "on_read": lambda users: store.get_online_features(
            features=["user_embedding:embedding"],
            entity_rows=[{schema.ENTITY_KEY: u, "instruction": instruction.text} for u in users],
        ),
    }
    report: dict[str, dict[str, dict[str, float]]] = {}
    for case in CASES:
        report[case] = {}
        for rows in ROW_COUNTS:
            report[case][str(rows)] = _time_reads(reads[case], user_ids, rows=rows, repeats=repeats)
            logger.info("%s, %d rows: %s", case, rows, report[case][str(rows)])
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict[str, dict[str, dict[str, float]]]) -> str:
    """The report as a small text table (for the CLI)."""
    lines = [f"{'case':<14}{'rows':>6}{'p50 ms':>10}{'p99 ms':>10}"]
    for case, by_rows in report.items():
        for rows, figures in by_rows.items():
            lines.append(f"{case:<14}{rows:>6}{figures['p50_ms']:>10.2f}{figures['p99_ms']:>10.2f}")
    return "\n".join(lines)


def _time_reads(read: Callable[[list[int]], Any], user_ids: list[int], *, rows: int, repeats: int) -> dict:
    """p50 and p99 of `repeats` reads of `rows` users; each read takes the next users round the id list."""
    batches = [[user_ids[(start + k) % len(user_ids)] for k in range(rows)] for start in range(0, repeats * rows, rows)]
    # Warm up with one pass over every user the timed reads touch, `rows` at a time: the registry cache, the
    # model, the item vectors (a trained model ships its catalog's; the fixture's items are new) and torch's
    # per-shape kernels are then in their serving state.
    touched = sorted({u for batch in batches for u in batch})
    for start in range(0, len(touched), rows):
        read(touched[start : start + rows]).to_dict()
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        read(batch).to_dict()
        seconds.append(time.perf_counter() - started)
    millis = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(millis, 50)), 3), "p99_ms": round(float(np.percentile(millis, 99)), 3)}


def _check_materialized(store: Any, user_id: int, instruction_id: str) -> None:
    """Refuse a repo whose online store lacks `user_id`'s behaviour or its embedding under `instruction_id`."""
    behaviour = store.get_online_features(
        features=schema.feature_refs(), entity_rows=[{schema.ENTITY_KEY: user_id}]
    ).to_dict()
    if all(values[0] is None for name, values in behaviour.items() if name != schema.ENTITY_KEY):
        raise ConfigError(
            f"the online store holds none of user {user_id}'s six behaviour views; run `feast materialize` "
            "for them first (the raw and on-read cases would time empty reads)"
        )
    response = store.get_online_features(
        features=[f"{VIEW_NAME}:embedding"],
        entity_rows=[{schema.ENTITY_KEY: user_id, INSTRUCTION_KEY: instruction_id}],
    ).to_dict()
    if response["embedding"][0] is None:
        raise ConfigError(
            f"no materialized embedding for user {user_id} and instruction {instruction_id!r}; run "
            "`instructue materialize --repo REPO` first (and `feast materialize` for the six views)"
        )
