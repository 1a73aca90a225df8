"""UserQA: (user, instruction, answer) triplets written from the users' own data.

For each training user and a few cut-off times (snapshot times with a full future window in the raw logs),
the input is the user's snapshot row at the cut-off (what Feast returns) and the answers describe
- *future behaviour* in the 30 days after the cut-off, from the raw event logs (fund purchases, staying
  active, travel spending, main spending category, mini programs opened, searches), and
- *stable attributes* visible in the snapshot row (main categories, spending level, activity rhythm, apps,
  profile facts), plus a general summary answered under the empty instruction.
Nothing comes from the generator's latent traits, so the same code runs on any Feast deployment's data.

Two rules keep it so on data unlike the generator's (e.g. MovieLens, training/movielens.py):
- a user's cut-offs are drawn among the snapshot times at which *that user* has a snapshot row (in any
  source), so per-user snapshot times work (on the synthetic data every user has a row at every time);
- a family whose answers take fewer than `MIN_DISTINCT_ANSWERS` distinct values over the whole build is
  dropped (logged): its answer is then a constant ("will not buy any fund" on data without funds, or
  nothing at all for a source the data lack) and teaches the model nothing about the user.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from instructue_plugin.errors import DataValidationError
from instructue_plugin.schema import ENTITY_KEY, PROFILE, SEQUENCE_SOURCES, TIMESTAMP_COLUMN

from .data import features_asof, last_event_time, raw_events, read_labels, snapshot_tables, snapshot_times, sql_path
from .instructions import FAMILIES, GENERAL_FAMILY, HELD_OUT_FAMILIES

logger = logging.getLogger(__name__)

FUTURE_WINDOW = timedelta(days=30)
MIN_DISTINCT_ANSWERS = 2  # a family with fewer distinct answers over the build is dropped
WEALTH, TRAVEL = "wealth", "travel"
USERQA_COLUMNS = [ENTITY_KEY, "cutoff", "family", "instruction", "answer"]


@dataclass
class UserContext:
    """What the answers of one (user, cut-off) are written from."""

    row: pd.Series  # the snapshot feature row at the cut-off
    future: dict[str, pd.DataFrame]  # raw events of each sequence source in the following 30 days


def _listing(values: list[str]) -> str:
    if len(values) == 1:
        return values[0]
    return ", ".join(values[:-1]) + " and " + values[-1]


def _names(values: Any) -> list[str]:
    """Distinct non-empty names in order of appearance (a null name reads as "" and names nothing)."""
    return [v for v in dict.fromkeys(values) if isinstance(v, str) and v]


def _items(row: pd.Series, column: str) -> list:
    """A list cell's items; a null cell (None, NaN or pd.NA: no row of that source yet at the cut-off) has none."""
    value = row.get(column)
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return [] if value is None or pd.isna(value) else list(value)


# ----- future behaviour ------------------------------------------------------------------------------


def answer_fund_purchase(ctx: UserContext) -> str:
    bills = ctx.future["bill"]
    funds = bills[bills["category"] == WEALTH]
    if funds.empty:
        return "No. The user will not buy any fund in the next 30 days."
    named = funds["merchant"][funds["merchant"] != ""]
    where = f", mainly at {named.mode().iloc[0]}" if len(named) else ""
    times = "once" if len(funds) == 1 else f"{len(funds)} times"
    return f"Yes. The user will buy funds {times} in the next 30 days{where}."


def answer_churn(ctx: UserContext) -> str:
    events = sum(len(f) for f in ctx.future.values())
    if events == 0:
        return "The user will become inactive: no activity at all in the next 30 days."
    level = "low" if events < 15 else "moderate" if events < 50 else "high"
    return f"The user will stay active next month, with {level} activity."


def answer_travel(ctx: UserContext) -> str:
    bills = ctx.future["bill"]
    travel = bills[bills["category"] == TRAVEL]
    if travel.empty:
        return "No. The user will not spend on travel in the next 30 days."
    merchants = _names(travel["merchant"])[:2]
    where = f", at {_listing(merchants)}" if merchants else ""
    return f"Yes. The user will pay for travel next month{where}."


def answer_next_category(ctx: UserContext) -> str:
    bills = ctx.future["bill"]
    if bills.empty:
        return "The user will make no payments in the next 30 days."
    named = bills[bills["category"] != ""]
    if named.empty:
        return "The user will make payments in the next 30 days, in categories not known."
    # By amount, then by number of payments (payments without an amount still count).
    per_category = named.groupby("category")["amount"].agg(total="sum", payments="size")
    ranking = per_category.sort_values(["total", "payments"], ascending=False, kind="stable").index.tolist()
    if len(ranking) == 1:
        return f"Most of the user's spending next month will go to {ranking[0]}."
    return f"Most of the user's spending next month will go to {ranking[0]}, then {ranking[1]}."


def answer_next_miniprogram(ctx: UserContext) -> str:
    visits = ctx.future["miniprogram"]
    if visits.empty:
        return "The user will not open any mini program in the next 30 days."
    programs = _names(visits["program"])[:3]
    return f"The user will open {_listing(programs)}." if programs else "The user will open mini programs next month."


def answer_future_search(ctx: UserContext) -> str:
    searches = ctx.future["search"]
    if searches.empty:
        return "The user will not search for anything in the next 30 days."
    queries = [f'"{q}"' for q in _names(searches["query"])[:2]]
    return f"The user will search for {_listing(queries)}." if queries else "The user will search next month."


# ----- stable attributes -----------------------------------------------------------------------------


def top_categories(row: pd.Series) -> list[str]:
    """The user's three most frequent payment categories in a snapshot row (most frequent first)."""
    counts = Counter(c for c in _items(row, "bill_category") if c)  # a null category ("") names nothing
    return [c for c, _ in counts.most_common(3)]


def answer_top_categories(ctx: UserContext) -> str | None:
    top = top_categories(ctx.row)
    return f"The user mostly spends on {_listing(top)}." if top else None


def answer_spending_level(ctx: UserContext) -> str | None:
    amounts = np.asarray(_items(ctx.row, "bill_amount"), dtype=float)
    merchants = _items(ctx.row, "bill_merchant")
    finite = np.isfinite(amounts)
    if not finite.any():
        return None
    largest = int(np.nanargmax(np.where(finite, amounts, -np.inf)))
    median = float(np.median(amounts[finite]))
    where = f" at {merchants[largest]}" if merchants[largest] else ""
    return f"A typical payment is about {median:.0f}; the largest recent one was {amounts[largest]:.0f}{where}."


def answer_activity_rhythm(ctx: UserContext) -> str | None:
    times = [t for s in SEQUENCE_SOURCES for t in _items(ctx.row, s.ts_column)]
    if len(times) < 2:
        return None
    stamps = pd.to_datetime(np.asarray(times, dtype="int64"), unit="s", utc=True)
    weekend = float(np.mean(stamps.dayofweek >= 5))
    days = "on weekends" if weekend > 0.4 else "on weekdays" if weekend < 0.2 else "all week"
    hour = int(np.median(stamps.hour))
    part = (
        "at night"
        if hour < 6
        else "in the morning"
        if hour < 12
        else "in the afternoon"
        if hour < 18
        else "in the evening"
    )
    span_weeks = max((max(times) - min(times)) / (7 * 86400), 1.0)
    per_week = len(times) / span_weeks
    level = "a few" if per_week < 5 else "about ten" if per_week < 15 else "many"
    return f"The user is mostly active {days}, {part}, with {level} interactions per week."


def answer_app_usage(ctx: UserContext) -> str | None:
    apps = _items(ctx.row, "app_app")
    minutes = np.nan_to_num(np.asarray(_items(ctx.row, "app_minutes"), dtype=float))
    if not apps:
        return None
    totals: Counter[str] = Counter()
    for app, spent in zip(apps, minutes, strict=True):
        if app:
            totals[app] += spent
    top = [a for a, _ in totals.most_common(2)]
    return f"The user spends the most time in {_listing(top)}." if top else None


def answer_profile_facts(ctx: UserContext) -> str | None:
    values = {f.name: ctx.row.get(PROFILE.column(f.name)) for f in PROFILE.fields}
    if values.get("age") is None or pd.isna(values.get("age")):
        return None
    parts = [f"A {int(values['age'])}-year-old"]
    if values.get("occupation"):
        parts.append(str(values["occupation"]))
    text = " ".join(parts)
    if values.get("gender"):
        text += f" ({values['gender']})"
    if values.get("city_tier") is not None and not pd.isna(values["city_tier"]):
        text += f" in a tier-{int(values['city_tier'])} city"
    if values.get("account_age_days") is not None and not pd.isna(values["account_age_days"]):
        years = int(values["account_age_days"]) // 365
        text += f", customer for {years} year" + ("" if years == 1 else "s")
    return text + "."


def answer_general(ctx: UserContext) -> str | None:
    parts = [a for a in (answer_top_categories(ctx), answer_app_usage(ctx), answer_profile_facts(ctx)) if a]
    return " ".join(parts) if parts else None


ANSWERS: dict[str, Callable[[UserContext], str | None]] = {
    "fund_purchase": answer_fund_purchase,
    "churn": answer_churn,
    "travel": answer_travel,
    "next_category": answer_next_category,
    "next_miniprogram": answer_next_miniprogram,
    "future_search": answer_future_search,
    "top_categories": answer_top_categories,
    "spending_level": answer_spending_level,
    "activity_rhythm": answer_activity_rhythm,
    "app_usage": answer_app_usage,
    "profile_facts": answer_profile_facts,
    GENERAL_FAMILY: answer_general,
}


# ----- building ---------------------------------------------------------------------------------------


def train_users(data_dir: Path) -> list[int]:
    """User ids of the `train` split."""
    labels = read_labels(data_dir)
    return sorted(labels.loc[labels["split"] == "train", ENTITY_KEY].astype(int).tolist())


def cutoff_candidates(data_dir: Path) -> list[pd.Timestamp]:
    """Snapshot times (of any source) followed by a full 30-day window inside the raw logs.

    The logs count as reaching one day past their newest event: a log that ends at a window's last day rarely
    has an event in its last second.
    """
    last_event = last_event_time(data_dir)
    candidates = [t for t in snapshot_times(data_dir) if t + FUTURE_WINDOW <= last_event + timedelta(days=1)]
    if not candidates:
        raise DataValidationError(f"{data_dir}: no snapshot time has a full 30-day future window in the raw logs")
    return candidates


def user_cutoffs(data_dir: Path, users: list[int], candidates: list[pd.Timestamp]) -> dict[int, list[pd.Timestamp]]:
    """Per user, the `candidates` (in their order) at which the user has a snapshot row in some source."""
    tables = snapshot_tables(data_dir).values()
    union = " UNION ".join(
        f"SELECT {ENTITY_KEY}, epoch_us({TIMESTAMP_COLUMN}) AS us FROM read_parquet({sql_path(t)})" for t in tables
    )
    con = duckdb.connect()
    con.register("wanted", pd.DataFrame({ENTITY_KEY: users}))
    pairs = con.execute(
        f"SELECT {ENTITY_KEY}, us FROM ({union}) WHERE {ENTITY_KEY} IN (SELECT {ENTITY_KEY} FROM wanted)"
    ).df()
    con.close()
    times: dict[int, set[int]] = {}
    for user, us in zip(pairs[ENTITY_KEY].to_numpy(), pairs["us"].to_numpy(), strict=True):
        times.setdefault(int(user), set()).add(int(us))
    keyed = [(c, c.value // 1000) for c in candidates]  # Timestamp.value is in ns
    return {u: [c for c, us in keyed if us in times.get(u, ())] for u in users}


def build_userqa(data_dir: Path, *, seed: int = 0, cutoffs_per_user: int = 2, progress: bool = True) -> pd.DataFrame:
    """UserQA triplets for the train users of `data_dir`.

    Args:
        data_dir: a data folder with `snapshots/`, `raw/` and `labels.parquet`.
        seed: picks the cut-offs and the paraphrase of each triplet.
        cutoffs_per_user: cut-off times sampled per user among the candidates.

    Returns:
        A frame with `user_id`, `cutoff`, `family`, `instruction` ("" for the general family), `answer`;
        families with fewer than `MIN_DISTINCT_ANSWERS` distinct answers are left out.
    """
    rng = np.random.default_rng(seed)
    users = train_users(data_dir)
    candidates = cutoff_candidates(data_dir)
    own = user_cutoffs(data_dir, users, candidates)
    pairs = []
    for u in users:
        if own[u]:
            picks = min(cutoffs_per_user, len(own[u]))
            pairs += [(u, c) for c in rng.choice(np.array(own[u], dtype=object), size=picks, replace=False)]
    skipped = sum(1 for u in users if not own[u])
    if not pairs:
        raise DataValidationError(
            f"{data_dir}: no train user has a snapshot row at a time followed by a full 30-day window in the raw logs"
        )
    if skipped:
        logger.info("%d of %d train users have no snapshot row at a cut-off with a full window", skipped, len(users))
    entities = pd.DataFrame(pairs, columns=[ENTITY_KEY, TIMESTAMP_COLUMN])
    features = features_asof(data_dir, entities)
    events = {s.name: raw_events(data_dir, s.name, user_ids=users) for s in SEQUENCE_SOURCES}
    by_user = {name: dict(tuple(frame.groupby(ENTITY_KEY))) for name, frame in events.items()}
    empty = {name: frame.iloc[0:0] for name, frame in events.items()}
    trained = [f for f in FAMILIES if f.name not in HELD_OUT_FAMILIES]
    records = []
    for _, row in tqdm(features.iterrows(), total=len(features), desc="UserQA", disable=not progress):
        user, cutoff = int(row[ENTITY_KEY]), row[TIMESTAMP_COLUMN]
        future = {}
        for name in events:
            frame = by_user[name].get(user, empty[name])
            times = frame[TIMESTAMP_COLUMN]
            future[name] = frame[(times > cutoff) & (times <= cutoff + FUTURE_WINDOW)]
        ctx = UserContext(row=row, future=future)
        for family in trained:
            answer = ANSWERS[family.name](ctx)
            if answer:
                instruction = family.train_paraphrases[rng.integers(len(family.train_paraphrases))]
                records.append((user, cutoff, family.name, instruction, answer))
        general = answer_general(ctx)
        if general:
            records.append((user, cutoff, GENERAL_FAMILY, "", general))
    triplets = pd.DataFrame.from_records(records, columns=USERQA_COLUMNS)
    return drop_constant_families(triplets)


def drop_constant_families(triplets: pd.DataFrame) -> pd.DataFrame:
    """The triplets without the families whose answers take fewer than `MIN_DISTINCT_ANSWERS` values."""
    distinct = triplets.groupby("family")["answer"].nunique()
    constant = sorted(distinct.index[distinct < MIN_DISTINCT_ANSWERS])
    if not constant:
        return triplets
    logger.info("dropping UserQA families with a constant answer on this data: %s", ", ".join(constant))
    return triplets[~triplets["family"].isin(constant)].reset_index(drop=True)


def instruction_catalog() -> dict:
    """Which phrasings UserQA trains on and which are held out (written beside the UserQA file)."""
    return {
        "held_out_families": sorted(HELD_OUT_FAMILIES),
        "families": {
            f.name: {
                "kind": f.kind,
                "canonical": f.canonical,
                "train": list(f.train_paraphrases) if f.name not in HELD_OUT_FAMILIES else [],
                "held_out": list(f.held_out_paraphrases) if f.name not in HELD_OUT_FAMILIES else list(f.paraphrases),
            }
            for f in FAMILIES
        },
    }


def instruction_catalog_path(userqa_file: Path) -> Path:
    """Where `write_userqa` puts the instruction catalog of a UserQA file: `<name>.instructions.json` beside it."""
    return Path(userqa_file).with_suffix(".instructions.json")


def write_userqa(triplets: pd.DataFrame, out: Path) -> Path:
    """Write triplets as parquet and the instruction catalog as `<name>.instructions.json` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    triplets.to_parquet(out, index=False)
    catalog_path = instruction_catalog_path(out)
    catalog_path.write_text(json.dumps(instruction_catalog(), indent=2))
    return catalog_path
