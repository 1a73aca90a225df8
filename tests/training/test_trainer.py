"""The trainer on the `tiny` preset: the losses fall when overfitting, --resume continues exactly, overrides apply."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from instructue_plugin.config import config_for_preset
from instructue_plugin.errors import ConfigError
from instructue_plugin.model import InstructUEModel
from training.losses import false_negative_mask
from training.trainer import TrainConfig, TrainingStep, load_training_users, lr_factor, train


def test_both_losses_fall_when_overfitting_a_fixed_batch(small_data, small_userqa):
    torch.manual_seed(0)
    triplets = pd.read_parquet(small_userqa)
    triplets["cutoff"] = pd.to_datetime(triplets["cutoff"], utc=True)
    batch = triplets.groupby("family").head(1).head(8)
    model = InstructUEModel.create(config_for_preset("tiny", lora_dropout=0.0))
    users = load_training_users(small_data, batch, max_items_per_source=model.config.max_items_per_source)
    behaviours = [users[(int(u), c)] for u, c in zip(batch["user_id"], batch["cutoff"], strict=True)]
    answers = batch["answer"].tolist()
    inputs = model.builder.build(behaviours, batch["instruction"].tolist(), answers)
    tensors = model.tensors(inputs)
    ids, mask = model.builder.build_answers(answers)
    step = TrainingStep(model, TrainConfig(data=small_data, out=small_data, temperature=0.1))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    history = []
    for _ in range(60):
        losses = step(
            tensors,
            torch.from_numpy(inputs.labels),
            torch.from_numpy(ids),
            torch.from_numpy(mask),
            torch.from_numpy(false_negative_mask(answers)),
        )
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["ar"] < 0.7 * first["ar"], (first, last)
    assert last["cl"] < 0.5 * first["cl"], (first, last)


def _config(data, userqa, out, **overrides) -> TrainConfig:
    values = dict(
        data=data, out=out, preset="tiny", userqa=userqa, steps=4, batch_size=4, checkpoint_every=2, warmup_steps=2
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_continues_exactly(small_data, small_userqa, tmp_path):
    straight = train(_config(small_data, small_userqa, tmp_path / "straight"), progress=False)

    def interrupt_after_two(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(_config(small_data, small_userqa, resumed_dir), progress=False, on_step=interrupt_after_two)
    assert (resumed_dir / "checkpoint" / "trainer_state.pt").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(small_data, small_userqa, resumed_dir), progress=False)
    train(_config(small_data, small_userqa, resumed_dir, resume=True), progress=False)

    a = load_file(straight / "model.safetensors")
    b = load_file(resumed_dir / "model.safetensors")
    assert a.keys() == b.keys()
    changed = [k for k in a if "lora_B" in k and a[k].abs().sum() > 0]
    assert changed, "training must have moved the LoRA weights"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses_a = pd.read_csv(straight / "losses.csv")
    losses_b = pd.read_csv(resumed_dir / "losses.csv")
    assert losses_a["loss"].tolist() == losses_b["loss"].tolist()
    assert losses_b["seconds"].is_monotonic_increasing, "training time adds up over the resumed run"
    assert (straight / "losses.png").exists()


def test_an_interrupt_inside_a_step_resumes_exactly(small_data, small_userqa, tmp_path, monkeypatch):
    # LoRA dropout draws random numbers in the forward pass: the resumed step must draw the same ones.
    assert config_for_preset("tiny").lora_dropout > 0
    straight = train(_config(small_data, small_userqa, tmp_path / "straight"), progress=False)
    calls = {"n": 0}
    real = torch.optim.lr_scheduler.LambdaLR.get_last_lr

    def interrupted(self):  # step 2's learning rate is read after its forward and backward passes
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.lr_scheduler.LambdaLR, "get_last_lr", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(_config(small_data, small_userqa, out), progress=False)
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 1 and [record["step"] for record in state["history"]] == [1]
    train(_config(small_data, small_userqa, out, resume=True), progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    losses_straight, losses_resumed = pd.read_csv(straight / "losses.csv"), pd.read_csv(out / "losses.csv")
    assert losses_straight.drop(columns="seconds").equals(losses_resumed.drop(columns="seconds"))


def test_the_losses_table_gives_the_rate_each_step_used(small_data, small_userqa, tmp_path):
    config = _config(small_data, small_userqa, tmp_path / "run")
    losses = pd.read_csv(train(config, progress=False) / "losses.csv")
    expected = [config.lr * lr_factor(s, warmup=config.warmup_steps, total=config.steps) for s in range(config.steps)]
    assert losses["lr"].tolist() == pytest.approx(expected)


def test_a_userqa_file_given_inside_the_run_folder_is_used_not_rebuilt(small_data, small_userqa, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    given = out / "userqa.parquet"
    subset = pd.read_parquet(small_userqa).groupby("family").head(3)
    subset.to_parquet(given)
    train(_config(small_data, given, out, steps=1), progress=False)
    assert pd.read_parquet(given).equals(subset)


def test_impossible_settings_are_refused_before_any_work(small_data, small_userqa, tmp_path):
    for bad in (
        {"temperature": 0},
        {"lr": -1e-3},
        {"new_params_lr": float("nan")},
        {"false_negative_threshold": 5},
        {"warmup_steps": -1},
        {"grad_clip": 0},
        {"time_budget_minutes": 0},
        {"preset": "bogus"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _config(small_data, small_userqa, tmp_path / "run", **bad)
    with pytest.raises(ValueError, match="no Hugging Face model folder at"):  # not after UserQA is built
        _config(small_data, small_userqa, tmp_path / "run", preset=f"hf:{tmp_path / 'missing'}")


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh(small_data, small_userqa, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "userqa.parquet").write_text("left by a run interrupted while building UserQA")
    with pytest.raises(ConfigError, match="starts afresh without --resume"):
        train(_config(small_data, small_userqa, out, resume=True), progress=False)
    train(_config(small_data, small_userqa, out), progress=False)
    assert (out / "model.safetensors").exists() and not (out / "userqa.parquet").exists()
    (out / "notes.txt").write_text("anything else is another run's")
    with pytest.raises(ConfigError, match="not empty"):
        train(_config(small_data, small_userqa, out), progress=False)


def test_resume_refuses_other_settings_and_warns_of_a_schedule_restart(small_data, small_userqa, tmp_path, caplog):
    out = tmp_path / "run"
    train(_config(small_data, small_userqa, out), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0\.001 -> 0\.01\)"):
        train(_config(small_data, small_userqa, out, resume=True, lr=0.01), progress=False)
    with caplog.at_level("WARNING", logger="training.trainer"):
        train(_config(small_data, small_userqa, out, resume=True, steps=6), progress=False)
    assert "--steps 6 instead of 4" in caplog.text and "warm restart" in caplog.text
    assert pd.read_csv(out / "losses.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]

    checkpoint = out / "checkpoint" / "trainer_state.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["trainable"].popitem()  # as if written by a model with other parameters
    torch.save(state, checkpoint)
    with pytest.raises(ConfigError, match="other trainable parameters"):
        train(_config(small_data, small_userqa, out, resume=True, steps=8), progress=False)


def test_resume_refuses_a_data_folder_of_other_users_but_takes_a_moved_copy(small_data, small_userqa, tmp_path):
    out = tmp_path / "run"
    train(_config(small_data, small_userqa, out, steps=2), progress=False)
    moved = shutil.copytree(small_data, tmp_path / "moved")
    train(_config(moved, small_userqa, out, steps=3, resume=True), progress=False)
    other = shutil.copytree(small_data, tmp_path / "other")
    labels = pd.read_parquet(other / "labels.parquet")
    labels.iloc[: len(labels) // 2].to_parquet(other / "labels.parquet")  # other users
    with pytest.raises(ConfigError, match="data folder of other users"):
        train(_config(other, small_userqa, out, steps=4, resume=True), progress=False)


def test_max_items_per_source_overrides_the_preset(small_data, small_userqa, tmp_path):
    preset_items = config_for_preset("tiny").max_items_per_source
    folder = train(
        _config(small_data, small_userqa, tmp_path / "run", steps=1, max_items_per_source=preset_items + 2),
        progress=False,
    )
    assert InstructUEModel.from_pretrained(folder).config.max_items_per_source == preset_items + 2
    with pytest.raises(ValueError, match="max_items_per_source"):
        _config(small_data, small_userqa, tmp_path / "bad", max_items_per_source=0)
