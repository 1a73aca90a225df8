"""Synthetic users: latent traits → event logs in five sources and a profile → raw logs, snapshots, labels.

The world (all times UTC; one global cut-off T = `CUTOFF`):
- History window (T−180d, T], future window (T, T+30d]. The raw logs hold both (a real log is continuous);
  snapshot tables hold rows at T−60d, T−30d and T; labels come from the future window.
- Latent traits per user: life stage, gender, income, risk appetite, price sensitivity, activity level,
  churn hazard, a daily/weekly rhythm, and a sparse interest vector over the twelve `CATEGORIES` (1–4
  interests drawn by life stage, gender, income and risk). In the future window the interests drift a
  little (weights jitter, and 20 % of users pick up a new interest). The profile (age, gender, occupation,
  city tier, account age, balance bucket) is a noisy function of the latents.

Event model, per user and sequence source s (rates in `SOURCE_MODELS`):
- *Signal* events: Poisson(activity × rate_s × days) in each window; users about to churn already slow
  down in the last 30 days of history (rate × exp(−2 × hazard)); churners (Bernoulli(hazard)) have no
  future events at all. A signal event's category is habitual with probability habit_s (food 60 %,
  transport 40 %: the distractors everyone shares) and otherwise drawn from the user's interests
  (weighted by the source's affinity for each category). Its item is Zipf-popular within the category.
- *Noise* events: on top of the signal, noise events arrive at `noise_rate` × the user's signal rate, i.e.
  their count is Poisson with mean `noise_rate` × the expected signal count, in every window and source.
  A noise event has a uniformly random category and a uniformly random item of that category; its time
  and numbers follow the same model as a signal event. So `noise_rate` = 1 doubles the expected event
  count and makes half the events noise (`noise_rate / (1 + noise_rate)` of them).
- Times: uniform over each window, warped by the user's rhythm (one of 12 hour-of-day × weekday
  profiles). Amounts: log-normal by category, scaled by income, lowered by price sensitivity for
  discretionary categories. Dwell times by action, app minutes by category and activity.

Labels (`labels.parquet`, one row per user; `oracle_*` is the probability the label was drawn from):
- `fund_purchase`: ≥ 1 future `bill` of category `wealth`.
- `churn`: no future event in any source (churned, or merely quiet).
- `travel_coupon`: response to a travel coupon sent at T: Bernoulli of a probability driven by travel
  interest, price sensitivity and activity; churners never respond. Not visible in the events.
- `insurance_interest`: ≥ 1 future event of category `insurance` in any source.
- `next_category`: category of the largest total future bill amount (null without future bills); the
  oracle ranks categories by expected future spend.
- `next_miniprogram`: the first mini program used in the future window (null if none); the oracle ranks
  programs by their per-event probability (top 10).

Randomness is drawn per block of `BLOCK_USERS` users from `SeedSequence([seed, block])`, so the data are
identical for the same seed and arguments whatever the chunk size (the raw part files split differently).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from instructue_plugin.errors import ConfigError
from instructue_plugin.feast_definitions import snapshot_path
from instructue_plugin.schema import (
    ENTITY_KEY,
    PROFILE,
    SCHEMA_HASH,
    SEQUENCE_BY_NAME,
    SEQUENCE_SOURCES,
    SOURCE_NAMES,
)
from training.snapshots import (
    SNAPSHOT_DIR,
    TIMESTAMP_TYPE,
    prepare_data_folder,
    profile_chunk,
    profile_schema,
    raw_table,
    snapshot_chunk,
)
from training.snapshots import snapshot_schema as _snapshot_schema
from training.synth.catalog import (
    ACTION_PROBS,
    ACTIONS,
    CATEGORIES,
    CATEGORY_INDEX,
    CHANNEL_PROBS,
    CHANNELS,
    DWELL_MEDIAN_S,
    HABITUAL_CATEGORIES,
    MINIPROGRAM_CATALOG,
    PRIMARY,
)

logger = logging.getLogger(__name__)

CUTOFF = datetime(2026, 6, 30, tzinfo=UTC)
HISTORY_DAYS = 180
FUTURE_DAYS = 30
LATE_DAYS = 30  # last month of history, when users about to churn already slow down
SNAPSHOT_OFFSETS_DAYS = (60, 30, 0)  # snapshot rows at T−60d, T−30d, T
BLOCK_USERS = 1000  # users per random stream: the unit of determinism
TRAIN_FRACTION = 0.7
TASKS = ("fund_purchase", "churn", "travel_coupon", "insurance_interest", "next_category", "next_miniprogram")
BINARY_TASKS = TASKS[:4]
RANKING_SIZE = 10  # length of oracle_next_miniprogram_ranking

_US = 1_000_000
_C = len(CATEGORIES)
_CI = CATEGORY_INDEX


@dataclass(frozen=True)
class SourceModel:
    """How often a source logs events and how much of it is habit."""

    rate_per_day: float  # signal events per day at activity 1
    habit_share: float  # share of signal events that are habitual (food, transport)
    affinity: dict[str, float] = field(default_factory=dict)  # interest multipliers by category (default 1)


SOURCE_MODELS: dict[str, SourceModel] = {
    "bill": SourceModel(0.20, 0.45, {"insurance": 0.7, "education": 0.8, "gaming": 0.8}),
    "miniprogram": SourceModel(0.12, 0.30, {"wealth": 1.2, "gaming": 1.2, "shopping": 1.2}),
    "page_path": SourceModel(0.12, 0.25, {"wealth": 1.5, "insurance": 1.3}),
    "app": SourceModel(0.12, 0.40, {"gaming": 1.5, "entertainment": 1.5, "wealth": 0.7, "insurance": 0.5}),
    "search": SourceModel(0.06, 0.20, {"travel": 1.5, "shopping": 1.3, "education": 1.2, "insurance": 0.8}),
}
HABIT_MIX = np.zeros(_C)
HABIT_MIX[[_CI[name] for name in HABITUAL_CATEGORIES]] = (0.6, 0.4)

# --- latent traits ----------------------------------------------------------------------------------------
LIFE_STAGES = ("student", "young_adult", "family", "midlife", "senior")
_STAGE_P = np.array([0.15, 0.30, 0.25, 0.20, 0.10])
_AGE_RANGE = np.array([[18, 24], [23, 34], [28, 45], [40, 60], [58, 80]])
_INCOME_MEAN = np.array([-0.8, 0.0, 0.3, 0.5, -0.2])
_ACTIVITY_MU = np.array([0.10, 0.15, 0.0, -0.10, -0.30])
# Interest prior by life stage, columns in CATEGORIES order:
#      food transport wealth insurance travel shopping entertainment health education gaming home beauty
_INTEREST_PRIOR = np.array([
    [1.0, 0.5, 0.3, 0.2, 1.0, 2.0, 2.5, 0.4, 3.0, 3.0, 0.2, 1.0],
    [1.0, 0.5, 1.0, 0.5, 2.0, 2.0, 1.5, 0.8, 1.0, 1.5, 0.8, 1.2],
    [1.0, 0.5, 1.2, 2.0, 1.2, 1.5, 0.8, 1.2, 2.0, 0.5, 2.0, 0.8],
    [1.0, 0.5, 2.2, 2.0, 1.2, 1.0, 0.6, 1.8, 0.6, 0.3, 1.5, 0.6],
    [1.0, 0.5, 1.8, 1.5, 1.5, 0.6, 0.6, 3.0, 0.2, 0.2, 1.0, 0.3],
])  # fmt: skip
OCCUPATIONS = next(f.categories for f in PROFILE.fields if f.name == "occupation")
_OCCUPATION_P = np.array([
    # student engineer educator healthcare executive salesman artist technician homemaker retired other
    [0.90, 0.00, 0.00, 0.00, 0.00, 0.00, 0.03, 0.00, 0.00, 0.00, 0.07],
    [0.05, 0.25, 0.08, 0.10, 0.05, 0.15, 0.07, 0.15, 0.02, 0.00, 0.08],
    [0.00, 0.20, 0.10, 0.10, 0.10, 0.15, 0.05, 0.12, 0.10, 0.00, 0.08],
    [0.00, 0.15, 0.10, 0.10, 0.20, 0.12, 0.03, 0.12, 0.08, 0.02, 0.08],
    [0.00, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.06, 0.75, 0.05],
])  # fmt: skip

# --- numbers per category (CATEGORIES order) ------------------------------------------------------------
AMOUNT_MEDIAN = np.array([38, 15, 800, 450, 700, 160, 70, 120, 300, 45, 220, 150], dtype=float)
AMOUNT_SIGMA = np.array([0.5, 0.6, 0.8, 0.5, 0.8, 0.9, 0.6, 0.8, 0.7, 0.9, 0.7, 0.6])
AMOUNT_INCOME_ELASTICITY = np.array([0.3, 0.2, 0.8, 0.5, 0.6, 0.5, 0.3, 0.3, 0.4, 0.2, 0.4, 0.5])
AMOUNT_DISCRETIONARY = np.array([0.5, 0.3, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3, 0.5, 1.0, 0.3, 1.0])
APP_MINUTES_MEDIAN = np.array([4, 5, 4, 3, 6, 8, 20, 5, 15, 25, 3, 6], dtype=float)

# --- time: hour bins from T−180d to T+30d, and the rhythm archetypes ---------------------------------------
_WINDOW_START = CUTOFF - timedelta(days=HISTORY_DAYS)
_WINDOW_START_US = int(_WINDOW_START.timestamp()) * _US
_CUTOFF_US = int(CUTOFF.timestamp()) * _US
_N_HOURS = (HISTORY_DAYS + FUTURE_DAYS) * 24
# Segments (hour bins): early history, late history, future.
_SEGMENT_HOURS = np.array([0, (HISTORY_DAYS - LATE_DAYS) * 24, HISTORY_DAYS * 24, _N_HOURS])
_SEGMENT_DAYS = np.diff(_SEGMENT_HOURS) / 24.0
_HOUR_PEAKS = (((8, 1.0), (12, 0.5)), ((12, 1.0), (19, 0.6)), ((20, 1.0), (13, 0.4)),
               ((23, 1.0), (1, 0.6)), ((8, 1.0), (18, 1.0)), ((10, 0.5), (16, 0.5)))  # fmt: skip
_WEEK_PROFILES = ((1.15,) * 5 + (0.6,) * 2, (0.85,) * 5 + (1.4,) * 2)
N_RHYTHMS = len(_HOUR_PEAKS) * len(_WEEK_PROFILES)


@cache
def _rhythm_cdf() -> tuple[np.ndarray, np.ndarray]:
    """Cumulative event intensity over the hour bins, per archetype: (N_RHYTHMS, n_hours + 1), and the
    concatenation `2k + cdf[k]` used to invert all archetypes with one searchsorted."""
    hours = np.arange(24)
    weekday0 = _WINDOW_START.weekday()
    day_of_week = (weekday0 + np.arange(_N_HOURS) // 24) % 7
    cdf = np.zeros((N_RHYTHMS, _N_HOURS + 1))
    k = 0
    for peaks in _HOUR_PEAKS:
        daily = 0.08 + sum(w * np.exp(-0.5 * (((hours - h + 12) % 24 - 12) / 1.8) ** 2) for h, w in peaks)
        for week in _WEEK_PROFILES:
            intensity = np.tile(daily, _N_HOURS // 24) * np.asarray(week)[day_of_week]
            cdf[k, 1:] = np.cumsum(intensity) / intensity.sum()
            k += 1
    flat = (cdf + 2.0 * np.arange(N_RHYTHMS)[:, None]).ravel()
    return cdf, flat


def _event_times(rng: np.random.Generator, segment_id: np.ndarray, segment: np.ndarray, rhythm: np.ndarray):
    """Event times (unix µs), sorted within each segment; `segment_id` must be non-decreasing."""
    cdf, flat = _rhythm_cdf()
    u = np.sort(segment_id + rng.random(len(segment_id))) - segment_id  # sorted uniforms per segment
    lo_h, hi_h = _SEGMENT_HOURS[segment], _SEGMENT_HOURS[segment + 1]
    a, b = cdf[rhythm, lo_h], cdf[rhythm, hi_h]
    target = a + np.clip(u, 0.0, 1.0) * (b - a)
    width = _N_HOURS + 1
    pos = np.searchsorted(flat, 2.0 * rhythm + target, side="right") - 1
    bin_ = np.clip(pos - rhythm * width, lo_h, hi_h - 1)
    c0, c1 = cdf[rhythm, bin_], cdf[rhythm, bin_ + 1]
    frac = np.clip((target - c0) / (c1 - c0), 0.0, 1.0)
    ts = _WINDOW_START_US + np.round((bin_ + frac) * 3600 * _US).astype(np.int64)
    future = segment == 2
    ts[future] = np.maximum(ts[future], _CUTOFF_US + 1)  # the future window is (T, T+30d]
    ts[~future] = np.minimum(ts[~future], _CUTOFF_US)
    return ts


def _sample_rows(probs: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One column index per event, drawn from row `row[i]` of `probs` (rows sum to 1), vectorized."""
    n_rows, width = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(n_rows)[:, None]).ravel()
    pos = np.searchsorted(flat, row + u, side="right")
    return np.clip(pos - row * width, 0, width - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Latents:
    """Latent traits of a block of users (arrays of length n; interests (n, n_categories))."""

    stage: np.ndarray
    female: np.ndarray
    age: np.ndarray
    z_income: np.ndarray
    risk: np.ndarray
    price_sens: np.ndarray
    activity: np.ndarray
    interest: np.ndarray  # history interests, rows sum to 1
    interest_future: np.ndarray  # drifted interests driving the future window
    account_age_days: np.ndarray  # at T
    hazard: np.ndarray
    churned: np.ndarray
    rhythm: np.ndarray


def sample_latents(rng: np.random.Generator, n: int) -> Latents:
    """Draw the latent traits of `n` users."""
    stage = rng.choice(len(LIFE_STAGES), size=n, p=_STAGE_P)
    female = rng.random(n) < 0.5
    age = rng.integers(_AGE_RANGE[stage, 0], _AGE_RANGE[stage, 1] + 1)
    z_income = _INCOME_MEAN[stage] + 0.6 * rng.standard_normal(n)
    risk = rng.beta(2.0 + (stage <= 1), 2.0 + (stage >= 3))
    price_sens = _sigmoid(-1.0 * z_income + 0.8 * rng.standard_normal(n))
    activity = np.exp(_ACTIVITY_MU[stage] + 0.55 * rng.standard_normal(n) - 0.55**2 / 2)

    prior = _INTEREST_PRIOR[stage].copy()
    prior[:, _CI["beauty"]] *= np.where(female, 2.5, 0.4)
    prior[:, _CI["gaming"]] *= np.where(female, 0.6, 1.5)
    prior[:, _CI["wealth"]] *= (0.4 + 1.2 * risk) * np.exp(0.4 * z_income)
    n_interests = 1 + rng.binomial(3, 0.45, n)
    # Gumbel-top-k: each user's n_interests categories, drawn without replacement from the prior.
    score = np.log(prior) + rng.gumbel(size=prior.shape)
    rank = np.argsort(np.argsort(-score, axis=1), axis=1)
    weights = rng.gamma(1.5, size=prior.shape) * (rank < n_interests[:, None])
    interest = weights / weights.sum(axis=1, keepdims=True)

    drift = interest * np.exp(0.35 * rng.standard_normal(prior.shape))
    new_interest = _sample_rows(prior / prior.sum(axis=1, keepdims=True), np.arange(n), rng.random(n))
    gets_new = rng.random(n) < 0.2
    drift[gets_new, new_interest[gets_new]] += 0.5 / n_interests[gets_new]
    interest_future = drift / drift.sum(axis=1, keepdims=True)

    account_age = (200 + rng.exponential(600.0, n)).astype(np.int64)
    logit = (
        -2.6
        - 1.5 * np.log(activity)
        + 1.0 * (account_age < 365)
        + 2.5 * (interest[:, _CI["gaming"]] + interest[:, _CI["entertainment"]])
        - 2.5 * interest[:, _CI["wealth"]]
        + 0.5 * rng.standard_normal(n)
    )
    hazard = _sigmoid(logit)
    churned = rng.random(n) < hazard
    rhythm = rng.integers(0, N_RHYTHMS, n)
    return Latents(
        stage, female, age, z_income, risk, price_sens, activity, interest, interest_future, account_age,
        hazard, churned, rhythm,
    )  # fmt: skip


def signal_category_probs(lat: Latents, source: str) -> np.ndarray:
    """(n, 2, n_categories) category distribution of a signal event, history [:, 0] and future [:, 1]."""
    model = SOURCE_MODELS[source]
    affinity = np.array([model.affinity.get(c, 1.0) for c in CATEGORIES])
    out = np.empty((len(lat.activity), 2, _C))
    for v, interest in enumerate((lat.interest, lat.interest_future)):
        weighted = interest * affinity
        weighted /= weighted.sum(axis=1, keepdims=True)
        out[:, v] = model.habit_share * HABIT_MIX + (1.0 - model.habit_share) * weighted
    return out


def event_category_probs(lat: Latents, source: str, noise_rate: float) -> np.ndarray:
    """(n, 2, n_categories) category distribution of any event (signal or noise) of `source`."""
    rho = noise_rate / (1.0 + noise_rate)
    return (1.0 - rho) * signal_category_probs(lat, source) + rho / _C


def amount_log_mean(category: np.ndarray, z_income: np.ndarray, price_sens: np.ndarray) -> np.ndarray:
    """Mean of log(amount) of a bill by category and user."""
    return (
        np.log(AMOUNT_MEDIAN[category])
        + AMOUNT_INCOME_ELASTICITY[category] * z_income
        + np.log1p(-0.35 * price_sens * AMOUNT_DISCRETIONARY[category])
    )


def sample_numeric(
    source: str,
    category: np.ndarray,
    secondary: np.ndarray | None,
    rng: np.random.Generator,
    *,
    z_income: np.ndarray | float = 0.0,
    price_sens: np.ndarray | float = 0.5,
    activity: np.ndarray | float = 1.0,
) -> dict[str, np.ndarray]:
    """The numeric item fields of events (float32), by source; user traits default to a typical user.

    Args:
        source: sequence source name.
        category: (n,) category index per event.
        secondary: (n,) channel or action index (bill, miniprogram), else None.
        rng: random generator.
        z_income, price_sens, activity: per-event user traits (or scalars).
    Returns:
        Bare numeric field name → (n,) float32 values (empty dict for sources without numbers).
    """
    n = len(category)
    if source == "bill":
        log_amount = amount_log_mean(category, z_income, price_sens)
        amount = np.exp(log_amount + AMOUNT_SIGMA[category] * rng.standard_normal(n))
        return {"amount": np.round(amount, 2).astype(np.float32)}
    if source == "miniprogram":
        dwell = np.exp(np.log(np.asarray(DWELL_MEDIAN_S)[secondary]) + 0.7 * rng.standard_normal(n))
        return {"dwell_s": np.round(dwell, 1).astype(np.float32)}
    if source == "app":
        minutes = np.exp(np.log(APP_MINUTES_MEDIAN[category]) + 0.25 * np.log(activity) + 0.8 * rng.standard_normal(n))
        return {"minutes": np.round(minutes, 1).astype(np.float32)}
    return {}


def sample_secondary(source: str, category: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """Channel (bill) or action (miniprogram) index per event, drawn by category; None for other sources."""
    if source == "bill":
        return _sample_rows(CHANNEL_PROBS, category, u)
    if source == "miniprogram":
        return _sample_rows(ACTION_PROBS, category, u)
    return None


@dataclass
class _Events:
    """One source's events for a block, sorted by (user, time)."""

    user: np.ndarray  # block-local user index
    segment: np.ndarray  # 0 early history, 1 late history, 2 future
    ts_us: np.ndarray
    category: np.ndarray
    item: np.ndarray
    secondary: np.ndarray | None
    numeric: dict[str, np.ndarray]


def _source_events(source: str, lat: Latents, rng: np.random.Generator, noise_rate: float) -> _Events:
    model = SOURCE_MODELS[source]
    n = len(lat.activity)
    rate = lat.activity * model.rate_per_day * (1.0 + noise_rate)
    lam = np.stack(
        [
            rate * _SEGMENT_DAYS[0],
            rate * np.exp(-2.0 * lat.hazard) * _SEGMENT_DAYS[1],
            np.where(lat.churned, 0.0, rate * _SEGMENT_DAYS[2]),
        ],
        axis=1,
    )
    segment_id = np.repeat(np.arange(n * 3), rng.poisson(lam).ravel())
    user, segment = segment_id // 3, segment_id % 3
    m = len(segment_id)
    ts_us = _event_times(rng, segment_id, segment, lat.rhythm[user])
    probs = signal_category_probs(lat, source).reshape(n * 2, _C)
    category = _sample_rows(probs, user * 2 + (segment == 2), rng.random(m))
    noise = rng.random(m) < noise_rate / (1.0 + noise_rate)
    category = np.where(noise, rng.integers(0, _C, m), category)
    item = PRIMARY[source].sample(category, rng.random(m), uniform=noise)
    secondary = sample_secondary(source, category, rng.random(m))
    numeric = sample_numeric(
        source,
        category,
        secondary,
        rng,
        z_income=lat.z_income[user],
        price_sens=lat.price_sens[user],
        activity=lat.activity[user],
    )
    return _Events(user, segment, ts_us, category, item, secondary, numeric)


@cache
def _dictionaries() -> dict[str, pa.Array]:
    """Arrow string arrays that item codes index into (shared, so written columns stay dictionary-coded)."""
    out = {"category": pa.array(CATEGORIES), "channel": pa.array(CHANNELS), "action": pa.array(ACTIONS)}
    out.update({catalog.field: pa.array(catalog.names) for catalog in PRIMARY.values()})
    out.update({f.name: pa.array(f.categories) for f in PROFILE.fields if f.kind == "categorical"})
    return out


def _event_fields(source: str, ev: _Events) -> dict[str, pa.Array | np.ndarray]:
    """Bare field name → column, text fields as dictionary arrays over the catalog."""
    d = _dictionaries()
    codes = {PRIMARY[source].field: ev.item, "category": ev.category}
    if source == "bill":
        codes["channel"] = ev.secondary
    if source == "miniprogram":
        codes["action"] = ev.secondary
    spec = SEQUENCE_BY_NAME[source]
    out: dict[str, pa.Array | np.ndarray] = {}
    for f in spec.fields:
        if f.role == "text":
            out[f.name] = pa.DictionaryArray.from_arrays(pa.array(codes[f.name].astype(np.int32)), d[f.name])
        else:
            out[f.name] = ev.numeric[f.name]
    return out


def _profile_fields(lat: Latents, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(lat.age)
    occupation = _sample_rows(_OCCUPATION_P, lat.stage, rng.random(n))
    rich_worker = (lat.z_income > 0.8) & (lat.stage >= 1) & (lat.stage <= 3) & (rng.random(n) < 0.4)
    occupation[rich_worker] = OCCUPATIONS.index("executive")
    city_tier = np.clip(np.round(2.5 - 0.9 * lat.z_income + 0.8 * rng.standard_normal(n)), 1, 4)
    balance = np.floor(2.0 + lat.z_income + 3.0 * lat.interest[:, _CI["wealth"]] + 0.7 * rng.standard_normal(n))
    return {
        "age": lat.age.astype(np.int64),
        "gender": np.where(lat.female, 0, 1),  # codes into ("F", "M")
        "occupation": occupation,
        "city_tier": city_tier.astype(np.int64),
        "account_age_days": lat.account_age_days,
        "balance_bucket": np.clip(balance, 0, 5).astype(np.int64),
    }


def snapshot_times_us() -> np.ndarray:
    """The generator's snapshot times (T−60d, T−30d, T) in unix µs."""
    return np.array([_CUTOFF_US - d * 86400 * _US for d in SNAPSHOT_OFFSETS_DAYS], dtype=np.int64)


def train_split(user_id: np.ndarray, seed: int) -> np.ndarray:
    """True for train users: a seeded splitmix64 hash of the user id below `TRAIN_FRACTION`."""
    salt = (seed * 0xD1B54A32D192ED03 + 0x9E3779B97F4A7C15) % 2**64  # Python ints: no overflow
    z = user_id.astype(np.int64).view(np.uint64) + np.uint64(salt)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < TRAIN_FRACTION


def _ranking_column(names: pa.Array, ranked: np.ndarray) -> pa.Array:
    n, k = ranked.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    return pa.ListArray.from_arrays(offsets, names.take(pa.array(ranked.ravel())))


def _labels(
    user_id: np.ndarray,
    lat: Latents,
    events: dict[str, _Events],
    rng: np.random.Generator,
    noise_rate: float,
    seed: int,
) -> pa.Table:
    n = len(user_id)
    rho = noise_rate / (1.0 + noise_rate)
    alive = 1.0 - lat.hazard
    expected = {s: lat.activity * m.rate_per_day * (1.0 + noise_rate) * FUTURE_DAYS for s, m in SOURCE_MODELS.items()}
    future_probs = {s: event_category_probs(lat, s, noise_rate)[:, 1] for s in SOURCE_MODELS}
    future = {s: ev.segment == 2 for s, ev in events.items()}

    # fund_purchase: a future wealth bill.
    bill = events["bill"]
    fb = future["bill"]
    wealth = np.zeros(n, bool)
    wealth[bill.user[fb & (bill.category == _CI["wealth"])]] = True
    oracle_fund = alive * -np.expm1(-expected["bill"] * future_probs["bill"][:, _CI["wealth"]])

    # churn: no future event in any source.
    any_future = np.zeros(n, bool)
    insurance = np.zeros(n, bool)
    for s, ev in events.items():
        any_future[ev.user[future[s]]] = True
        insurance[ev.user[future[s] & (ev.category == _CI["insurance"])]] = True
    total = sum(expected.values())
    oracle_churn = lat.hazard + alive * np.exp(-total)
    lam_ins = sum(expected[s] * future_probs[s][:, _CI["insurance"]] for s in SOURCE_MODELS)
    oracle_insurance = alive * -np.expm1(-lam_ins)

    # travel_coupon: a campaign response, invisible in the events; churners never respond.
    p_respond = _sigmoid(
        -2.6 + 7.0 * lat.interest_future[:, _CI["travel"]] + 4.0 * (lat.price_sens - 0.5) + 0.8 * np.log(lat.activity)
    )
    coupon = (rng.random(n) < p_respond) & ~lat.churned

    # next_category: the category with the largest total future bill amount.
    spend = np.bincount(bill.user[fb] * _C + bill.category[fb], weights=bill.numeric["amount"][fb], minlength=n * _C)
    spend = spend.reshape(n, _C)
    has_bill = spend.sum(axis=1) > 0
    cats = pa.array(CATEGORIES)
    cat_codes = np.where(has_bill, spend.argmax(axis=1), 0)
    next_category = cats.take(pa.array(cat_codes, mask=~has_bill))
    mean_amount = np.exp(
        amount_log_mean(np.arange(_C)[None, :], lat.z_income[:, None], lat.price_sens[:, None])
        + AMOUNT_SIGMA[None, :] ** 2 / 2
    )
    category_ranking = np.argsort(-(future_probs["bill"] * mean_amount), axis=1, kind="stable")

    # next_miniprogram: the first program used in the future window.
    mini = events["miniprogram"]
    fm = np.flatnonzero(future["miniprogram"])
    first_user, first_at = np.unique(mini.user[fm], return_index=True)  # events are time-sorted per user
    first_program = np.zeros(n, np.int64)
    has_mini = np.zeros(n, bool)
    first_program[first_user] = mini.item[fm[first_at]]
    has_mini[first_user] = True
    programs = pa.array(MINIPROGRAM_CATALOG.names)
    item_cat = MINIPROGRAM_CATALOG.categories
    signal_future = signal_category_probs(lat, "miniprogram")[:, 1]
    p_program = (1.0 - rho) * signal_future[:, item_cat] * MINIPROGRAM_CATALOG.popularity[None, :] + rho / _C / (
        MINIPROGRAM_CATALOG.category_size[item_cat][None, :]
    )
    program_ranking = np.argsort(-p_program, axis=1, kind="stable")[:, :RANKING_SIZE]

    split = np.where(train_split(user_id, seed), "train", "eval")
    return pa.table(
        {
            ENTITY_KEY: pa.array(user_id, pa.int64()),
            "split": pa.array(split, pa.string()),
            "cutoff": pa.array(np.full(n, _CUTOFF_US)).cast(TIMESTAMP_TYPE),
            "fund_purchase": pa.array(wealth.astype(np.int8)),
            "oracle_fund_purchase": pa.array(oracle_fund),
            "churn": pa.array((~any_future).astype(np.int8)),
            "oracle_churn": pa.array(oracle_churn),
            "travel_coupon": pa.array(coupon.astype(np.int8)),
            "oracle_travel_coupon": pa.array(alive * p_respond),
            "insurance_interest": pa.array(insurance.astype(np.int8)),
            "oracle_insurance_interest": pa.array(oracle_insurance),
            "next_category": next_category,
            "oracle_next_category": cats.take(pa.array(category_ranking[:, 0])),
            "oracle_next_category_ranking": _ranking_column(cats, category_ranking),
            "next_miniprogram": programs.take(pa.array(first_program, mask=~has_mini)),
            "oracle_next_miniprogram": programs.take(pa.array(program_ranking[:, 0])),
            "oracle_next_miniprogram_ranking": _ranking_column(programs, program_ranking),
        }
    )


@dataclass
class _Block:
    raw: dict[str, pa.Table]
    snapshots: dict[str, pa.Table]
    labels: pa.Table


def generate_block(seed: int, block: int, users: int, noise_rate: float) -> _Block:
    """All outputs of one block of `BLOCK_USERS` users (the last block may be smaller)."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, block]).spawn(8)]
    first = block * BLOCK_USERS
    n = min(BLOCK_USERS, users - first)
    user_id = np.arange(first + 1, first + n + 1, dtype=np.int64)  # ids start at 1
    lat = sample_latents(streams[0], n)
    times = snapshot_times_us()
    row_user, row_time = np.repeat(user_id, len(times)), np.tile(times, n)

    raw: dict[str, pa.Table] = {}
    snapshots: dict[str, pa.Table] = {}
    events: dict[str, _Events] = {}
    for i, spec in enumerate(SEQUENCE_SOURCES):
        ev = _source_events(spec.name, lat, streams[1 + i], noise_rate)
        events[spec.name] = ev
        fields = _event_fields(spec.name, ev)
        uid = user_id[ev.user]
        raw[spec.name] = raw_table(uid, ev.ts_us, fields)
        snapshots[spec.name] = snapshot_chunk(
            spec, user_id=uid, ts_us=ev.ts_us, fields=fields, row_user=row_user, row_time_us=row_time
        )

    # The profile is observed at each snapshot time (account age grows).
    prof = _profile_fields(lat, streams[6])
    d = _dictionaries()
    prof_fields: dict[str, pa.Array | np.ndarray] = {}
    for f in PROFILE.fields:
        values = np.repeat(prof[f.name], len(times))
        if f.name == "account_age_days":
            values = values - np.tile(np.asarray(SNAPSHOT_OFFSETS_DAYS), n)
        if f.kind == "categorical":
            prof_fields[f.name] = pa.DictionaryArray.from_arrays(pa.array(values.astype(np.int32)), d[f.name])
        else:
            prof_fields[f.name] = values.astype(np.int64)
    raw[PROFILE.name] = raw_table(row_user, row_time, prof_fields)
    snapshots[PROFILE.name] = profile_chunk(
        user_id=row_user, ts_us=row_time, fields=prof_fields, row_user=row_user, row_time_us=row_time
    )
    labels = _labels(user_id, lat, events, streams[7], noise_rate, seed)
    return _Block(raw, snapshots, labels)


@dataclass
class SynthSummary:
    """What `generate` wrote."""

    users: int
    events: dict[str, int]  # raw rows per source
    seconds: float
    out_dir: Path
    paths: dict[str, Path]  # raw folders, snapshot tables, labels, meta


def generate(
    out_dir: Path,
    *,
    users: int,
    seed: int,
    noise_rate: float = 0.3,
    chunk_size: int = 20_000,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Generate `users` synthetic users: raw logs, snapshot tables, labels and `meta.json` under `out_dir`.

    Args:
        out_dir: output folder (created; must be empty unless `overwrite`).
        users: number of users (ids 1..users).
        seed: random seed; the same seed and arguments give identical data.
        noise_rate: noise events per signal event, in expectation (see the module docstring).
        chunk_size: users held in memory and written per part file (rounded up to whole blocks of 1,000).
        overwrite: remove a previous run's outputs (raw/, snapshots/, labels.parquet, meta.json) first.
        progress: show a tqdm progress bar.
    Returns:
        A `SynthSummary`.
    Raises:
        ConfigError: users, seed, noise_rate or chunk_size out of range.
        DataValidationError: `out_dir` exists and is not empty, without `overwrite`.
    """
    if not isinstance(users, int | np.integer) or users <= 0:
        raise ConfigError(f"users must be a positive integer, got {users!r}")
    if not math.isfinite(noise_rate) or noise_rate < 0:
        raise ConfigError(f"noise_rate must be a finite number >= 0, got {noise_rate!r}")
    if chunk_size <= 0:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    out_dir = Path(out_dir)
    prepare_data_folder(out_dir, overwrite=overwrite)
    started = time.perf_counter()
    raw_dir, snap_dir = out_dir / "raw", out_dir / SNAPSHOT_DIR
    for name in SOURCE_NAMES:
        (raw_dir / name).mkdir(parents=True, exist_ok=True)
    snap_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {f"raw/{name}": raw_dir / name for name in SOURCE_NAMES}
    paths.update({f"snapshots/{name}": snapshot_path(out_dir, name) for name in SOURCE_NAMES})
    paths["labels"] = out_dir / "labels.parquet"
    paths["meta"] = out_dir / "meta.json"

    blocks_per_chunk = max(1, math.ceil(chunk_size / BLOCK_USERS))
    n_blocks = math.ceil(users / BLOCK_USERS)
    events = dict.fromkeys(SOURCE_NAMES, 0)
    snapshot_rows = dict.fromkeys(SOURCE_NAMES, 0)
    positives = dict.fromkeys(BINARY_TASKS, 0)
    schemas = {s.name: _snapshot_schema(s) for s in SEQUENCE_SOURCES} | {PROFILE.name: profile_schema()}
    writers = {name: pq.ParquetWriter(paths[f"snapshots/{name}"], schemas[name]) for name in SOURCE_NAMES}
    labels_writer: pq.ParquetWriter | None = None
    logger.info("generating %d users (seed %d, noise_rate %.3g) into %s", users, seed, noise_rate, out_dir)
    try:
        with tqdm(total=users, desc="synth", unit="user", disable=not progress) as bar:
            for part, b0 in enumerate(range(0, n_blocks, blocks_per_chunk)):
                blocks = [
                    generate_block(seed, b, users, noise_rate) for b in range(b0, min(b0 + blocks_per_chunk, n_blocks))
                ]
                for name in SOURCE_NAMES:
                    raw = pa.concat_tables([blk.raw[name] for blk in blocks])
                    # No stored Arrow schema: readers see plain strings, not the dictionary we wrote from.
                    pq.write_table(raw, raw_dir / name / f"part-{part:05d}.parquet", store_schema=False)
                    snap = pa.concat_tables([blk.snapshots[name] for blk in blocks])
                    writers[name].write_table(snap)
                    events[name] += raw.num_rows
                    snapshot_rows[name] += snap.num_rows
                labels = pa.concat_tables([blk.labels for blk in blocks])
                if labels_writer is None:
                    labels_writer = pq.ParquetWriter(paths["labels"], labels.schema)
                labels_writer.write_table(labels)
                for task in BINARY_TASKS:
                    positives[task] += int(np.asarray(labels.column(task)).sum())
                bar.update(labels.num_rows)
    finally:
        for writer in writers.values():
            writer.close()
        if labels_writer is not None:
            labels_writer.close()
    seconds = time.perf_counter() - started
    meta = {
        "generator": "training.synth",
        "seed": seed,
        "users": users,
        "noise_rate": noise_rate,
        "chunk_size": chunk_size,
        "block_users": BLOCK_USERS,
        "cutoff": CUTOFF.isoformat(),
        "history_days": HISTORY_DAYS,
        "future_days": FUTURE_DAYS,
        "snapshot_times": [datetime.fromtimestamp(t / _US, tz=UTC).isoformat() for t in snapshot_times_us()],
        "schema_hash": SCHEMA_HASH,
        "categories": list(CATEGORIES),
        "tasks": list(TASKS),
        "train_fraction": TRAIN_FRACTION,
        "rows": {"raw": events, "snapshots": snapshot_rows, "labels": users},
        "positive_rate": {task: positives[task] / users for task in BINARY_TASKS},
    }
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %d users, %d events in %.1f s", users, sum(events.values()), seconds)
    return SynthSummary(users=users, events=events, seconds=seconds, out_dir=out_dir, paths=paths)
