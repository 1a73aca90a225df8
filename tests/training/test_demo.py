"""The README's main command, `instructue demo`, end to end on the `tiny` preset in a temporary folder."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest

from tests.feast_repo.conftest import REPO_SOURCE
from training.demo import DemoPaths, run_demo
from training.evaluate.report import BinaryScore, MetricsFile
from training.synth import generate
from training.trainer import TrainConfig, train


def test_demo_runs_every_step_and_shows_two_users(tmp_path, monkeypatch):
    repo = tmp_path / "feast_repo"
    shutil.copytree(REPO_SOURCE, repo, ignore=shutil.ignore_patterns("*.db", "data", "__pycache__"))
    paths = DemoPaths(
        data=tmp_path / "data",
        model=tmp_path / "model",
        export=tmp_path / "export",
        repo=repo,
        report=tmp_path / "report",
    )
    # A demo interrupted while training (Ctrl-C after step 2) continues that run when started again.
    generate(paths.data, users=300, seed=0, progress=False)

    def interrupt(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=paths.data, out=paths.model, preset="tiny", steps=3, warmup_steps=3), on_step=interrupt)

    lines: list[str] = []
    run_demo(echo=lines.append, paths=paths, preset="tiny", users=300, steps=3, eval_users=120)
    text = "\n".join(lines)
    assert "continuing the interrupted run" in text
    assert pd.read_csv(paths.model / "losses.csv")["step"].tolist() == [1, 2, 3]

    assert (paths.report / "report.md").exists() and (paths.export / "manifest.json").exists()
    metrics = MetricsFile.model_validate_json((paths.report / "metrics.json").read_text())
    assert 0 < metrics.users <= 120
    for task, methods in metrics.tasks.items():
        assert len(methods) == 7, task  # four baselines, general, instructed, unseen paraphrases
        for method, score in methods.items():
            value = score.auc if isinstance(score, BinaryScore) else score.recall_at_k
            assert math.isfinite(value), (task, method)
    for step in range(1, 8):
        assert f"== {step}." in text, f"step {step} missing from the demo output"
    shown = [line for line in lines if line.strip().startswith("user ") and line.rstrip().endswith("] ...")]
    assert len(shown) == 6, text  # two users x (general, fund, travel) read back from Feast
    assert all("None" not in line for line in shown), text
    assert sum("nearest to" in line for line in lines) == 4  # two users x two instructions

    # A second run reuses every output instead of recomputing it.
    again: list[str] = []
    run_demo(echo=again.append, paths=paths, preset="tiny", users=300, steps=3, eval_users=120)
    assert "nothing to do" in "\n".join(again).lower()


def test_the_demo_writes_its_own_folders_whatever_the_environment_names(tmp_path, monkeypatch):
    from instructue_plugin import settings

    monkeypatch.setenv("INSTRUCTUE_DATA", str(tmp_path / "my-data"))  # a user's own data and model
    monkeypatch.setenv("INSTRUCTUE_MODEL", str(tmp_path / "my-model"))
    paths = DemoPaths.default()
    assert paths.data == settings.DEFAULT_DATA_DIR and paths.export == settings.DEFAULT_MODEL_DIR
    assert all(tmp_path not in p.parents for p in (paths.data, paths.model, paths.export, paths.report))
