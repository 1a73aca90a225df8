"""The synthetic generator and the noise injector: determinism, label quality, noise model, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.schema import PROFILE, SEQUENCE_SOURCES, SOURCE_NAMES, feature_columns
from training.synth import generate
from training.synth.catalog import CATEGORIES, HABITUAL_CATEGORIES, PRIMARY, category_of
from training.synth.generator import BINARY_TASKS, CUTOFF
from training.synth.noise import inject_noise

USERS = 3000  # enough for stable AUCs on the ~900 eval users, and still ~1 s to generate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, users=USERS, seed=7, progress=False)
    return out


@pytest.fixture(scope="module")
def labels(data) -> pd.DataFrame:
    return pd.read_parquet(data / "labels.parquet")


def _all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    out = {f"raw/{n}": pd.read_parquet(folder / "raw" / n) for n in SOURCE_NAMES}
    out.update({f"snapshots/{n}": pd.read_parquet(folder / "snapshots" / f"{n}.parquet") for n in SOURCE_NAMES})
    out["labels"] = pd.read_parquet(folder / "labels.parquet")
    return out


def _latest(data: Path, name: str) -> pd.DataFrame:
    table = pd.read_parquet(data / "snapshots" / f"{name}.parquet")
    return table[table["event_timestamp"] == pd.Timestamp(CUTOFF)].set_index("user_id")


def test_layout_and_types(data):
    for name in SOURCE_NAMES:
        parts = sorted((data / "raw" / name).glob("part-*.parquet"))
        assert parts, name
        schema = pq.read_schema(parts[0])
        assert str(schema.field("user_id").type) == "int64"
        assert str(schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    bill_raw = pq.read_schema(next((data / "raw" / "bill").glob("*.parquet")))
    assert str(bill_raw.field("merchant").type) == "string"  # plain strings, not dictionaries
    columns = ["user_id", "event_timestamp"]
    for name in SOURCE_NAMES:
        columns += list(pq.read_schema(data / "snapshots" / f"{name}.parquet").names[2:])
    assert columns[2:] == feature_columns()
    labels = pd.read_parquet(data / "labels.parquet")
    assert len(labels) == USERS and labels["user_id"].is_unique
    assert set(labels["split"]) == {"train", "eval"}
    assert 0.6 < (labels["split"] == "train").mean() < 0.8


def test_same_seed_same_files_and_chunk_size_does_not_matter(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, users=2100, seed=5, chunk_size=1000, progress=False)
    generate(b, users=2100, seed=5, chunk_size=1000, progress=False)
    generate(c, users=2100, seed=5, chunk_size=5000, progress=False)
    files_a = _all_files(a)
    assert len(files_a) > 10
    assert files_a == _all_files(b)
    tables_a, tables_c = _tables(a), _tables(c)
    assert len(list((c / "raw" / "bill").glob("*.parquet"))) == 1  # one chunk, where `a` has three parts
    for key, frame in tables_a.items():
        pd.testing.assert_frame_equal(frame, tables_c[key], obj=key)


def test_different_seeds_differ(tmp_path):
    generate(tmp_path / "a", users=500, seed=1, progress=False)
    generate(tmp_path / "b", users=500, seed=2, progress=False)
    bill_a = pd.read_parquet(tmp_path / "a" / "raw" / "bill")
    bill_b = pd.read_parquet(tmp_path / "b" / "raw" / "bill")
    assert len(bill_a) != len(bill_b) or not bill_a["merchant"].equals(bill_b["merchant"])
    la, lb = pd.read_parquet(tmp_path / "a" / "labels.parquet"), pd.read_parquet(tmp_path / "b" / "labels.parquet")
    assert not np.allclose(la["oracle_churn"], lb["oracle_churn"])


def test_positive_rates_and_oracle_aucs(labels):
    for task in BINARY_TASKS:
        rate = labels[task].mean()
        auc = roc_auc_score(labels[task], labels[f"oracle_{task}"])
        print(f"{task}: positive rate {rate:.3f}, oracle AUC {auc:.3f}")
        assert 0.05 <= rate <= 0.60, task
        assert 0.75 <= auc <= 0.97, task
        assert labels[f"oracle_{task}"].between(0, 1).all()


def test_recommendation_labels(labels):
    shares = labels["next_category"].value_counts(normalize=False) / len(labels)
    print("next_category shares:", shares.round(3).to_dict())
    assert shares.max() <= 0.40
    assert (labels["oracle_next_category"].value_counts() / len(labels)).max() <= 0.40
    assert set(labels["next_category"].dropna()) <= set(CATEGORIES)
    assert labels["oracle_next_category_ranking"].map(len).eq(len(CATEGORIES)).all()
    assert (labels["oracle_next_category"] == labels["oracle_next_category_ranking"].map(lambda r: r[0])).all()
    assert set(labels["next_miniprogram"].dropna()) <= set(PRIMARY["miniprogram"].names)
    assert labels["oracle_next_miniprogram_ranking"].map(len).eq(10).all()
    # The oracle ranking beats a global popularity ranking at recall@10 for next_miniprogram.
    has = labels["next_miniprogram"].notna()
    oracle_hits = [
        y in r
        for y, r in zip(labels["next_miniprogram"][has], labels["oracle_next_miniprogram_ranking"][has], strict=True)
    ]
    top10 = set(labels["next_miniprogram"][has].value_counts().index[:10])
    popular_hits = labels["next_miniprogram"][has].isin(top10)
    print(f"next_miniprogram recall@10: oracle {np.mean(oracle_hits):.3f}, popularity {popular_hits.mean():.3f}")
    assert np.mean(oracle_hits) > popular_hits.mean() + 0.05
    # The realized next category has no future bill exactly for users without a future bill: churners have none.
    assert labels.loc[labels["churn"] == 1, "next_category"].isna().all()


def _bag_of_items(data: Path, users: pd.Series) -> list[list[str]]:
    docs: list[list[str]] = [[] for _ in range(len(users))]
    for source in SEQUENCE_SOURCES:
        latest = _latest(data, source.name).reindex(users.values)
        columns = [latest[source.column(f.name)] for f in source.text_fields]
        for i, values in enumerate(zip(*columns, strict=True)):
            docs[i] += [f"{source.name}:{source.item_text(t)}" for t in zip(*values, strict=True)]
    return docs


def test_bag_of_items_is_above_chance_and_below_the_oracle(data, labels):
    x = TfidfVectorizer(analyzer=lambda doc: doc, sublinear_tf=True).fit_transform(
        _bag_of_items(data, labels["user_id"])
    )
    train = (labels["split"] == "train").to_numpy()
    for task in BINARY_TASKS:
        y = labels[task].to_numpy()
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], y[train])
        bag = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
        oracle = roc_auc_score(y[~train], labels[f"oracle_{task}"].to_numpy()[~train])
        print(f"{task}: bag-of-items AUC {bag:.3f}, oracle AUC {oracle:.3f} (eval users)")
        assert bag > 0.55, task
        assert bag < oracle - 0.02, task


def _history_categories(folder: Path) -> pd.DataFrame:
    frames = []
    for name in ("bill", "miniprogram", "app"):
        raw = pd.read_parquet(folder / "raw" / name, columns=["user_id", "event_timestamp", "category"])
        frames.append(raw[raw["event_timestamp"] <= pd.Timestamp(CUTOFF)])
    return pd.concat(frames)


def _off_interest_share(events: pd.DataFrame) -> float:
    """Share of events outside the habitual categories and the user's three most frequent other ones."""
    events = events[~events["category"].isin(HABITUAL_CATEGORIES)]
    counts = events.groupby(["user_id", "category"]).size().rename("n").reset_index()
    counts["rank"] = counts.groupby("user_id")["n"].rank(method="first", ascending=False)
    return counts.loc[counts["rank"] > 3, "n"].sum() / counts["n"].sum()


def test_noise_rate_changes_the_event_mix_as_documented(tmp_path):
    generate(tmp_path / "clean", users=1000, seed=3, noise_rate=0.0, progress=False)
    generate(tmp_path / "noisy", users=1000, seed=3, noise_rate=1.0, progress=False)
    clean, noisy = _history_categories(tmp_path / "clean"), _history_categories(tmp_path / "noisy")
    ratio = len(noisy) / len(clean)
    share_clean, share_noisy = _off_interest_share(clean), _off_interest_share(noisy)
    print(f"events x{ratio:.2f}; off-interest share {share_clean:.3f} -> {share_noisy:.3f}")
    # noise_rate 1 adds as many noise events as signal events, in expectation.
    assert 1.85 < ratio < 2.15
    # Without noise a user's events stay within their (at most four) interests; noise spreads them out.
    assert share_clean < 0.05
    assert share_noisy > share_clean + 0.15
    # Noise reaches every category.
    assert set(noisy["category"]) == set(CATEGORIES)


@pytest.mark.parametrize("users", [0, -5])
def test_no_users_is_an_error(tmp_path, users):
    with pytest.raises(ConfigError, match="users"):
        generate(tmp_path / "out", users=users, seed=0, progress=False)


@pytest.mark.parametrize("noise_rate", [-0.1, float("nan"), float("inf")])
def test_bad_noise_rate_is_an_error(tmp_path, noise_rate):
    with pytest.raises(ConfigError, match="noise_rate"):
        generate(tmp_path / "out", users=10, seed=0, noise_rate=noise_rate, progress=False)


def test_a_negative_seed_is_an_error_that_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        generate(tmp_path / "out", users=10, seed=-1, progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    generate(out, users=2500, seed=0, chunk_size=1000, progress=False)
    assert len(list((out / "raw" / "bill").glob("*.parquet"))) == 3
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataValidationError, match="not empty"):
        generate(out, users=100, seed=0, progress=False)
    generate(out, users=100, seed=1, overwrite=True, progress=False)
    assert len(list((out / "raw" / "bill").glob("*.parquet"))) == 1  # no part left from the first run
    assert len(pd.read_parquet(out / "labels.parquet")) == 100
    assert (out / "notes.txt").read_text() == "mine"  # only the generator's own outputs are removed
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(DataValidationError, match="not empty"):
        generate(other, users=10, seed=0, progress=False)


def test_users_without_events_get_empty_lists(data):
    for source in SEQUENCE_SOURCES:
        table = pd.read_parquet(data / "snapshots" / f"{source.name}.parquet")
        assert len(table) == 3 * USERS
        for column in source.feature_columns:
            assert table[column].notna().all(), column
        lengths = table[source.ts_column].map(len)
        assert lengths.max() == source.max_items
        for column in source.feature_columns:
            assert table[column].map(len).equals(lengths), column
    search = pd.read_parquet(data / "snapshots" / "search.parquet")
    assert (search["search_ts"].map(len) == 0).any()  # some users have no search history yet
    profile = pd.read_parquet(data / "snapshots" / "profile.parquet")
    assert profile[list(PROFILE.feature_columns)].notna().all().all()


def test_items_come_from_the_catalog_and_lists_are_time_sorted(data):
    bill = _latest(data, "bill")
    merchants = np.concatenate(bill["bill_merchant"].to_numpy())
    categories = np.concatenate(bill["bill_category"].to_numpy())
    assert all(category_of("bill", m) == c for m, c in zip(merchants[:2000], categories[:2000], strict=True))
    assert all((np.diff(ts) >= 0).all() for ts in bill["bill_ts"])
    cutoff_s = int(pd.Timestamp(CUTOFF).timestamp())
    assert max(ts.max() for ts in bill["bill_ts"] if len(ts)) <= cutoff_s  # no future item in a T snapshot
    distinct = sum(len(PRIMARY[s].names) for s in PRIMARY)
    assert distinct < 20_000


# --- inject_noise --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def features(data) -> pd.DataFrame:
    frames = [_latest(data, name).drop(columns="event_timestamp") for name in SOURCE_NAMES]
    frame = pd.concat(frames, axis=1).iloc[:400].reset_index()
    frame.loc[5, list(SEQUENCE_SOURCES[4].feature_columns)] = None  # a user Feast knows nothing about
    return frame


def _copy(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.map(lambda v: v.copy() if isinstance(v, np.ndarray) else v)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and a.index.equals(b.index)
    for column in a.columns:
        for x, y in zip(a[column], b[column], strict=True):
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y)
            else:
                assert x == y or (pd.isna(x) and pd.isna(y)), column


def test_inject_noise_rate_zero_is_identity(features):
    _assert_same(inject_noise(features, rate=0.0, seed=1), features)


def test_inject_noise_doubles_items_up_to_max_and_leaves_input_alone(features):
    before = _copy(features)
    noisy = inject_noise(features, rate=1.0, seed=1)
    _assert_same(features, before)
    for source in SEQUENCE_SOURCES:
        old = features[source.ts_column].map(lambda v: 0 if v is None else len(v))
        new = noisy[source.ts_column].map(lambda v: 0 if v is None else len(v))
        assert new.equals(np.minimum(2 * old, source.max_items)), source.name
        for column in source.feature_columns:
            assert noisy[column].map(lambda v: 0 if v is None else len(v)).equals(new), column
        assert all(v is None or (np.diff(v) >= 0).all() for v in noisy[source.ts_column])
        # The newest item is kept: injected items fall inside the user's existing time span.
        for o, n in zip(features[source.ts_column], noisy[source.ts_column], strict=True):
            if o is not None and len(o):
                assert n[-1] >= o[-1]
    assert noisy.loc[5, "search_query"] is None
    for column in PROFILE.feature_columns:
        assert noisy[column].equals(features[column])
    # Injected items are catalog items with consistent categories.
    merchants = np.concatenate(noisy["bill_merchant"].to_numpy())
    categories = np.concatenate(noisy["bill_category"].to_numpy())
    assert all(category_of("bill", m) == c for m, c in zip(merchants, categories, strict=True))


def test_inject_noise_never_cuts_a_row_stored_longer_than_max_items(features):
    bill = SEQUENCE_SOURCES[0]
    row = features.iloc[[0]].copy()
    base = int(row.at[0, bill.ts_column][0])
    length = bill.max_items * 2  # a snapshot built with `instructue snapshots --max-items 64`
    row.at[0, bill.ts_column] = np.arange(base, base + length, dtype=np.int64)
    for field in bill.fields:
        column = bill.column(field.name)
        row.at[0, column] = np.resize(np.asarray(row.at[0, column]), length)
    noisy = inject_noise(row, rate=0.25, seed=3)
    ts = noisy.at[0, bill.ts_column]
    assert len(ts) == length  # as long as it was: the newest `length` of old + injected items
    assert base + length - 1 in ts and (np.diff(ts) >= 0).all()
    assert len(noisy.at[0, "bill_merchant"]) == length


def test_inject_noise_adds_random_categories(features):
    def mix(frame):
        values = pd.Series(np.concatenate(frame["bill_category"].to_numpy())).value_counts(normalize=True)
        return values.reindex(list(CATEGORIES), fill_value=0.0)

    before, after = mix(features), mix(inject_noise(features, rate=1.0, seed=2))
    # Uniform noise pulls every category's share towards 1/12.
    assert (after - 1 / len(CATEGORIES)).abs().sum() < (before - 1 / len(CATEGORIES)).abs().sum()


def test_inject_noise_is_seeded_and_validates(features):
    a = inject_noise(features, rate=0.5, seed=3)
    _assert_same(a, inject_noise(features, rate=0.5, seed=3))
    with pytest.raises(ConfigError):
        inject_noise(features, rate=-1.0, seed=0)
    with pytest.raises(DataValidationError, match="app"):
        inject_noise(features.drop(columns=["app_minutes"]), rate=0.5, seed=0)
