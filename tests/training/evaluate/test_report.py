"""`metrics.json` follows its documented shape (`MetricsFile`) and is strict JSON."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from training.evaluate.report import MetricsFile, write_report


def _metrics(with_oracle: bool) -> dict:
    methods = {"bag_of_items": 0.70, "zero_shot_llm": 0.72, "instructue_general": 0.69, "instructue_instructed": 0.75}
    tasks = {
        "fund_purchase": {m: {"auc": auc, "ks": auc - 0.4} for m, auc in methods.items()},
        "churn": {m: {"auc": auc - 0.05, "ks": auc - 0.45} for m, auc in methods.items()},
        "next_category": {m: {"recall_at_k": auc - 0.1, "k": 3} for m, auc in methods.items()},
    }
    oracle = {"fund_purchase": {"auc": 0.85, "ks": 0.5}, "churn": {"auc": 0.80, "ks": 0.45}} if with_oracle else {}
    noise = {"0": {m: auc for m, auc in methods.items()}, "0.5": {m: auc - 0.02 for m, auc in methods.items()}}
    awareness = {
        "instructions": {"fund_purchase": "fund", "churn": "churn", "general": ""},
        "auc": {t: {"fund_purchase": 0.7, "churn": 0.68, "general": 0.66} for t in ("fund_purchase", "churn")},
    }
    return {"tasks": tasks, "oracle": oracle, "noise": noise, "instruction_awareness": awareness, "users": 300}


@pytest.mark.parametrize("with_oracle", [True, False])
def test_metrics_json_validates_and_is_strict_json(tmp_path, with_oracle):
    summary = write_report(_metrics(with_oracle), tmp_path, binary_tasks=["fund_purchase", "churn"], title="t")
    text = (tmp_path / "metrics.json").read_text()
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    report = MetricsFile.model_validate(parsed)
    assert report.summary.best_baseline == "zero_shot_llm"
    assert report.summary.margin_over_best_baseline == pytest.approx(0.03)
    if with_oracle:
        assert report.summary.gap_closed == pytest.approx(0.03 / (0.825 - 0.695))
    else:  # no oracle: no gap to close, written as null rather than NaN
        assert math.isnan(summary["gap_closed"]) and report.summary.gap_closed is None
    assert {"report.md", "tasks.png", "noise.png"} <= {p.name for p in tmp_path.iterdir()}


def test_a_wrong_shape_is_refused(tmp_path):
    good = json.loads(json.dumps(_metrics(True)))
    with pytest.raises(ValidationError, match="summary"):
        MetricsFile.model_validate(good)  # no summary
    bad = _metrics(True)
    bad["tasks"]["churn"]["bag_of_items"] = {"auc": 0.7}  # neither a binary score (ks) nor a ranking one
    with pytest.raises(ValidationError):
        write_report(bad, tmp_path / "report", binary_tasks=["fund_purchase", "churn"], title="t")
    assert not (tmp_path / "report").exists()  # nothing written


def test_noise_loss_is_measured_against_the_best_baseline_that_reads_behaviour():
    from training.evaluate.report import headline

    metrics = _metrics(True)
    for rate in ("0", "0.5"):  # the profile-only baseline is the best one and injected noise cannot touch it
        metrics["noise"][rate]["profile_lr"] = 0.80
    for task in ("fund_purchase", "churn"):
        metrics["tasks"][task]["profile_lr"] = {"auc": 0.80, "ks": 0.4}
    metrics["noise"]["0.5"]["instructue_instructed"] = 0.75 - 0.01
    summary = headline(metrics, ["fund_purchase", "churn"])
    assert summary["best_baseline"] == "profile_lr"
    assert summary["noise_reference_baseline"] == "zero_shot_llm"  # the best of the others (0.72 - 0.025)
    assert summary["noise_loss_share"] == pytest.approx(0.01 / 0.02)
