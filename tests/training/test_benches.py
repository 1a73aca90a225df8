"""`instructue bench synth` and `bench train`: reports whose figures agree with each other, and clear errors."""

from __future__ import annotations

import json
import math

import pytest

from instructue_plugin.errors import ConfigError
from training import bench_synth, bench_train


def test_bench_synth_reports_throughput_memory_and_targets(tmp_path):
    report_path = tmp_path / "bench-synth.json"
    report = bench_synth.run(400, report_path=report_path, seed=3)
    assert json.loads(report_path.read_text()) == report
    assert report["users"] == 400 and report["events"] == sum(report["events_per_source"].values()) > 400
    rounding = 0.005 / report["seconds"] + 0.001  # seconds are reported to 0.01 s
    assert report["users_per_s"] == pytest.approx(400 / report["seconds"], rel=rounding)
    assert 0 < report["rss_before_mb"] <= report["peak_rss_mb"]
    assert report["meets_targets"] == (
        report["seconds"] <= report["targets"]["seconds_max"]
        and report["peak_rss_mb"] <= report["targets"]["peak_rss_mb_max"]
    )
    table = bench_synth.format_table(report)
    assert "peak RSS MB" in table and "targets met: " in table


def test_bench_train_times_a_real_step_and_refuses_impossible_sizes(tmp_path):
    report_path = tmp_path / "bench-train.json"
    report = bench_train.run(presets=("tiny",), batch_size=4, steps=2, report_path=report_path)
    assert json.loads(report_path.read_text()) == report
    figures = report["presets"]["tiny"]
    assert figures["batch_size"] == 4 and figures["timed_steps"] == 2 and figures["sequence_length"] > 0
    assert math.isfinite(figures["seconds_per_step"]) and figures["seconds_per_step"] > 0
    assert figures["samples_per_s"] == pytest.approx(4 / figures["seconds_per_step"])
    assert "tiny" in bench_train.format_table(report)
    with pytest.raises(ConfigError, match="at least 1"):
        bench_train.run(presets=("tiny",), steps=0, report_path=report_path)
    with pytest.raises(ConfigError, match="more than the"):
        bench_train.run(presets=("tiny",), batch_size=10**6, steps=1, report_path=report_path)
