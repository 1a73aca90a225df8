"""`instructue export --calibration-data`: real users' rows join the parity check and the int8 calibration."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from instructue_plugin.cli import app
from instructue_plugin.config import config_for_preset
from instructue_plugin.manifest import MANIFEST_FILE
from instructue_plugin.model import InstructUEModel
from instructue_plugin.onnx_export import MAX_PARITY_FEATURE_ROWS
from instructue_plugin.schema import ENTITY_KEY
from training.data import latest_features_sample, read_labels


def test_feature_sample_is_seeded_and_holds_each_users_latest_row(small_data):
    first = latest_features_sample(small_data, 40, seed=3)
    again = latest_features_sample(small_data, 40, seed=3)
    other = latest_features_sample(small_data, 40, seed=4)
    assert len(first) == 40 and first[ENTITY_KEY].is_unique
    pd.testing.assert_frame_equal(first, again)
    assert set(first[ENTITY_KEY]) != set(other[ENTITY_KEY])
    assert set(first[ENTITY_KEY]) <= set(read_labels(small_data)[ENTITY_KEY])
    snapshots = pd.read_parquet(small_data / "snapshots" / "profile.parquet")
    latest = snapshots.sort_values("event_timestamp").groupby(ENTITY_KEY).tail(1).set_index(ENTITY_KEY)
    user = int(first[ENTITY_KEY].iloc[0])
    assert first.set_index(ENTITY_KEY).loc[user, "profile_age"] == latest.loc[user, "profile_age"]


def test_export_calibrates_on_the_data_folders_users(small_data, tmp_path):
    model_dir = tmp_path / "model"
    InstructUEModel.create(config_for_preset("tiny")).save_pretrained(model_dir)
    without = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--out", str(tmp_path / "plain")])
    assert without.exit_code == 0, without.output
    result = CliRunner().invoke(
        app,
        ["export", "--model", str(model_dir), "--out", str(tmp_path / "calibrated"), "--int8"]
        + ["--calibration-data", str(small_data)],
    )
    assert result.exit_code == 0, result.output
    plain = json.loads((tmp_path / "plain" / MANIFEST_FILE).read_text())["parity"]["user_embedding"]
    calibrated = json.loads((tmp_path / "calibrated" / MANIFEST_FILE).read_text())["parity"]["user_embedding"]
    used = min(MAX_PARITY_FEATURE_ROWS, read_labels(small_data)[ENTITY_KEY].nunique())
    assert plain["real_feature_rows"] == 0
    assert calibrated["real_feature_rows"] == used
    assert calibrated["real_batches"] == plain["real_batches"] + -(-used // 32)
    assert calibrated["real_max_abs_diff"] <= 1e-4


def test_bench_int8_reports_served_and_refit_auc_with_a_bootstrap_interval(small_data, tmp_path):
    model_dir, export_dir, report = tmp_path / "model", tmp_path / "export", tmp_path / "bench-int8.json"
    InstructUEModel.create(config_for_preset("tiny")).save_pretrained(model_dir)
    exported = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--out", str(export_dir), "--int8"])
    assert exported.exit_code == 0, exported.output
    result = CliRunner().invoke(
        app, ["bench", "int8", "--model", str(export_dir), "--data", str(small_data), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(report.read_text())
    labels = read_labels(small_data)
    assert measured["users"] == int((labels["split"] == "eval").sum())
    tasks = ["fund_purchase", "churn", "travel_coupon", "insurance_interest"]
    assert sorted(measured["aucs"]) == sorted(f"{t}/{kind}" for t in tasks for kind in ("instructed", "general"))
    for row in measured["aucs"].values():
        assert 0 <= row["fp32"] <= 1 and 0 <= row["int8_served"] <= 1
        assert row["served_difference"] == row["int8_served"] - row["fp32"]
        low, high = row["served_difference_95ci"]
        assert -1 <= low <= high <= 1
    assert measured["max_abs_served_difference"] == max(abs(r["served_difference"]) for r in measured["aucs"].values())
    assert 0.9 < measured["cosine_int8_vs_fp32"]["min"] <= 1.0001
    assert "95% CI" in result.output
