"""UserQA reading a data folder: cut-offs from any source, raw logs in the layouts `instructue snapshots` reads."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from instructue_plugin.errors import DataValidationError
from training.data import features_asof, last_event_time, raw_events, read_labels
from training.snapshots import build_snapshots
from training.userqa import (
    UserContext,
    answer_next_category,
    build_userqa,
    cutoff_candidates,
    train_users,
    user_cutoffs,
)


def test_cutoffs_do_not_depend_on_the_bill_source(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    expected = cutoff_candidates(data)
    bill = data / "snapshots" / "bill.parquet"
    pd.read_parquet(bill).iloc[0:0].to_parquet(bill)  # a deployment without payments
    assert cutoff_candidates(data) == expected


def test_raw_logs_as_single_files_or_missing_sources(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    search = raw_events(data, "search")
    folder = data / "raw" / "search"
    merged = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))])
    shutil.rmtree(folder)
    merged.to_parquet(data / "raw" / "search.parquet")  # raw/<source>.parquet instead of raw/<source>/
    pd.testing.assert_frame_equal(raw_events(data, "search"), search)

    shutil.rmtree(data / "raw" / "app")  # a source this deployment does not log
    app = raw_events(data, "app")
    assert app.empty and {"user_id", "event_timestamp"} <= set(app.columns)
    triplets = build_userqa(data, seed=0, progress=False)
    assert len(triplets) > 0 and triplets["answer"].str.len().min() > 0


def test_raw_times_as_naive_timestamps_or_unix_seconds_read_as_utc(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    bill, search = raw_events(data, "bill"), raw_events(data, "search")
    newest = last_event_time(data)
    for source, to_plain in (
        ("bill", lambda t: t.dt.tz_localize(None)),  # naive: UTC, as `instructue snapshots` reads it
        ("search", lambda t: t.astype("int64") / 1e6),  # unix seconds as a float (times are whole microseconds)
    ):
        folder = data / "raw" / source
        for part in sorted(folder.glob("*.parquet")):
            frame = pd.read_parquet(part)
            frame["event_timestamp"] = to_plain(frame["event_timestamp"].dt.as_unit("us"))
            frame.to_parquet(part)
    pd.testing.assert_frame_equal(raw_events(data, "bill"), bill, check_dtype=False)
    pd.testing.assert_frame_equal(raw_events(data, "search"), search, check_dtype=False)
    assert last_event_time(data) == newest


def test_a_data_folder_whose_path_holds_a_quote_reads_like_any_other(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "team's data")
    assert last_event_time(data) == last_event_time(small_data)
    pd.testing.assert_frame_equal(raw_events(data, "app"), raw_events(small_data, "app"))
    assert cutoff_candidates(data) == cutoff_candidates(small_data)
    entities = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [pd.Timestamp("2026-07-01", tz="UTC")] * 2})
    pd.testing.assert_frame_equal(features_asof(data, entities), features_asof(small_data, entities))
    users = train_users(data)[:5]
    assert user_cutoffs(data, users, cutoff_candidates(data)) == user_cutoffs(
        small_data, users, cutoff_candidates(small_data)
    )


def test_labels_without_a_split_column_are_refused_by_name(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    read_labels(data).drop(columns="split").to_parquet(data / "labels.parquet")
    with pytest.raises(DataValidationError, match="no column split"):
        build_userqa(data, seed=0, progress=False)


def test_null_names_and_missing_amounts_in_raw_logs_give_answers_without_them(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    for source, column in (("bill", "merchant"), ("miniprogram", "program"), ("search", "query")):
        for path in sorted((data / "raw" / source).glob("*.parquet")):
            frame = pd.read_parquet(path)
            frame[column] = None  # a log without names: `instructue snapshots` reads them as ""
            if source == "bill":
                frame["amount"] = float("nan")
            frame.to_parquet(path)
    assert (raw_events(data, "bill")["merchant"] == "").all()
    triplets = build_userqa(data, seed=0, progress=False)
    answers = triplets.groupby("family")["answer"].apply(list)
    for family in ("fund_purchase", "travel", "next_miniprogram", "future_search"):
        assert family in answers, family
    joined = " ".join(triplets["answer"])
    assert " at ." not in joined and "open ." not in joined and '""' not in joined


def test_snapshots_built_from_raw_logs_give_userqa_for_users_without_rows_at_early_cutoffs(small_data, tmp_path):
    # `instructue snapshots` writes a user's rows of a source from their first event in it on: a read at an
    # earlier cut-off finds no row there (null list cells), unlike the generator's snapshots.
    data = tmp_path / "data"
    build_snapshots(small_data / "raw", data, progress=False)
    shutil.copytree(small_data / "raw", data / "raw")
    shutil.copy(small_data / "labels.parquet", data / "labels.parquet")
    triplets = build_userqa(data, seed=0, progress=False)
    assert len(triplets) > 0 and triplets["answer"].str.len().min() > 0
    assert "activity_rhythm" in set(triplets["family"])


@pytest.mark.parametrize(
    ("removed", "says"),
    [("raw", r"raw logs folder not found.*put them at DATA/raw"), ("labels.parquet", r"user_id and split")],
)
def test_a_data_folder_missing_a_part_says_how_to_make_it(small_data, tmp_path, removed, says):
    data = shutil.copytree(small_data, tmp_path / "data")
    target = data / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataValidationError, match=says):
        build_userqa(data, seed=0, progress=False)


def test_next_category_ranks_by_payments_when_amounts_are_missing():
    nan = float("nan")
    bills = pd.DataFrame({"category": ["travel", "beauty", "beauty", ""], "amount": [nan, nan, nan, nan]})
    ctx = UserContext(row=pd.Series(dtype=object), future={"bill": bills})
    assert answer_next_category(ctx) == "Most of the user's spending next month will go to beauty, then travel."


def test_a_data_folder_of_other_feature_definitions_is_refused_by_table_and_column(small_data, tmp_path):
    data = shutil.copytree(small_data, tmp_path / "data")
    bill = data / "snapshots" / "bill.parquet"
    pd.read_parquet(bill).rename(columns={"bill_amount": "bill_value"}).to_parquet(bill)
    with pytest.raises(DataValidationError, match="bill.parquet lacks the column.*bill_amount"):
        features_asof(data, pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp("2026-06-30", tz="UTC")]}))
    for path in (data / "raw" / "search").glob("*.parquet"):
        pd.read_parquet(path).rename(columns={"query": "text"}).to_parquet(path)
    with pytest.raises(DataValidationError, match="raw log of 'search'.*query"):
        raw_events(data, "search")
