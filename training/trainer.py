"""Training InstructUE on UserQA: L = L_ar + alpha * L_cl, LoRA on the LLM.

Reads top to bottom: the config, the data (UserQA triplets and their users' featurized snapshots), the
model, the LR schedule, the loop, checkpoints. Batches are drawn by a generator seeded with (seed, step,
process), so `--resume` continues exactly where a run stopped. Runs under `accelerate launch` on several
GPUs unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from tqdm.auto import tqdm

from instructue_plugin.backbones import hf_backbone_dir
from instructue_plugin.config import config_for_preset
from instructue_plugin.errors import ConfigError, DataValidationError, MissingPackageError
from instructue_plugin.featurize import UserBehaviour, featurize
from instructue_plugin.manifest import sha256_file
from instructue_plugin.model import InstructUEModel
from instructue_plugin.schema import ENTITY_KEY, TIMESTAMP_COLUMN

from .data import LABELS, features_asof
from .losses import answer_cross_entropy, false_negative_mask, info_nce
from .userqa import build_userqa, instruction_catalog_path, write_userqa

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "trainer_state.pt"
LOSSES_CSV = "losses.csv"
LOSSES_PNG = "losses.png"
USERQA_FILE = "userqa.parquet"  # written into the run folder when no --userqa is given
# What a run writes before its first checkpoint: a folder holding only these belongs to a run that stopped while
# building UserQA or encoding items, and a new run may start there.
UNSTARTED_RUN_FILES = frozenset({USERQA_FILE, instruction_catalog_path(Path(USERQA_FILE)).name})


class TrainConfig(BaseModel):
    """Everything a training run depends on (saved as `train_config.json` beside the model)."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    out: Path
    preset: str = "smol-cpu"
    # Items per source the model reads (None: the preset's); a dataset with one source can give it the budget.
    max_items_per_source: int | None = None
    userqa: Path | None = None  # a UserQA file; None builds one from `data` into `out/userqa.parquet`
    steps: int = 1000
    batch_size: int = 16  # in-batch negatives grow with it
    # Each batch holds this many question families (batch_size / families_per_batch triplets each): negatives
    # of the same family force the contrastive loss to tell users apart, not merely question types.
    families_per_batch: int = 2
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)  # LoRA weights
    # Adapters, special tokens and head start from scratch: a larger step.
    new_params_lr: float = Field(3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss: Literal["both", "contrastive", "ar"] = "both"
    alpha: float = Field(1.0, ge=0, allow_inf_nan=False)  # weight of the contrastive loss
    temperature: float = Field(0.07, gt=0, allow_inf_nan=False)  # InfoNCE temperature (DESIGN: 0.05-0.1)
    # Answers this similar (word Jaccard) are not negatives; 1 masks identical word sets only.
    false_negative_threshold: float = Field(0.9, gt=0, le=1)
    time_budget_minutes: float | None = Field(None, gt=0)  # stop early (and save) after this long
    checkpoint_every: int = 100
    seed: int = 0
    resume: bool = False

    @field_validator("steps", "batch_size", "families_per_batch", "checkpoint_every", "max_items_per_source")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        try:
            config_for_preset(value)  # refused before UserQA is built, not after
            if value.startswith("hf:"):
                hf_backbone_dir(value)
        except (ConfigError, MissingPackageError) as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("batch_size")
    @classmethod
    def _two_for_negatives(cls, value: int) -> int:
        if value < 2:
            raise ValueError("batch_size must be >= 2 (in-batch negatives)")
        return value


class TrainingStep(nn.Module):
    """One forward pass computing both losses (a module, so that DDP syncs its gradients)."""

    def __init__(self, model: InstructUEModel, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(
        self,
        user_inputs: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        answer_ids: torch.Tensor | None,
        answer_mask: torch.Tensor | None,
        false_negatives: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        inputs = dict(user_inputs)
        user_position = inputs.pop("user_position")
        hidden = self.model.user_hidden(**inputs)  # (B, L, H)
        zero = hidden.new_zeros(())
        losses = {"ar": zero, "cl": zero}
        if labels is not None:
            logits, targets = self.model.answer_logits(hidden, labels)
            losses["ar"] = answer_cross_entropy(logits, targets)
        if answer_ids is not None:
            user = self.model.project(hidden[torch.arange(hidden.shape[0]), user_position])  # (B, E)
            answer = self.model.answer_embedding(answer_ids, answer_mask)  # (B, E)
            losses["cl"] = info_nce(user, answer, temperature=self.config.temperature, false_negatives=false_negatives)
        losses["loss"] = losses["ar"] + self.config.alpha * losses["cl"]
        return losses


def sample_batch(
    by_family: dict[str, np.ndarray], rng: np.random.Generator, *, batch_size: int, families: int
) -> np.ndarray:
    """Triplet indices of one batch: `families` random families, an equal share of triplets from each."""
    names = list(by_family)
    chosen = rng.choice(len(names), size=min(families, len(names)), replace=False)
    share = -(-batch_size // len(chosen))  # ceil
    parts = [rng.choice(by_family[names[c]], size=min(share, len(by_family[names[c]])), replace=False) for c in chosen]
    return np.concatenate(parts)[:batch_size]


# What a resumed run may change: where things are, how long to go on, how often to checkpoint.
RESUMABLE_CHANGES = {"data", "out", "userqa", "steps", "time_budget_minutes", "checkpoint_every", "resume"}


def _run_settings(config: TrainConfig) -> dict[str, object]:
    """The settings a resumed run must share with the run it continues."""
    return config.model_dump(mode="json", exclude=RESUMABLE_CHANGES)


def _check_resumable(
    state: dict, config: TrainConfig, model: InstructUEModel, checkpoint_path: Path, labels_sha256: str
) -> None:
    """Refuse to resume a checkpoint of another run; say when a new `steps` restarts the LR schedule.

    Raises:
        ConfigError: other settings than `RESUMABLE_CHANGES`, or parameters that do not match this model.
    """
    saved = state.get("settings")
    if saved is not None:
        changed = {k: (saved.get(k), v) for k, v in _run_settings(config).items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError(f"{checkpoint_path} was written by a run with other settings ({details})")
    if state.get("labels_sha256") not in (None, labels_sha256):
        raise ConfigError(
            f"{checkpoint_path} was trained on a data folder of other users ({config.data / LABELS} differs from "
            "the run's): resume with the run's data folder (a moved copy is fine), or train into a new --out"
        )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state["trainable"]) != trainable:
        raise ConfigError(f"{checkpoint_path} holds other trainable parameters than this model (another preset?)")
    if state.get("steps") not in (None, config.steps):
        step = state["step"]
        before = lr_factor(step - 1, warmup=config.warmup_steps, total=state["steps"])
        after = lr_factor(step, warmup=config.warmup_steps, total=config.steps)
        logger.warning(
            "--steps %d instead of %d: the cosine schedule restarts over the new length; the learning rate "
            "goes from %.2f to %.2f of its peak at step %d (a warm restart)",
            config.steps,
            state["steps"],
            before,
            after,
            step,
        )


def checkpoint_file(out: Path) -> Path:
    """Where a run into `out` keeps the state `--resume` continues from."""
    return Path(out) / "checkpoint" / CHECKPOINT_FILE


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_training_users(
    data_dir: Path, triplets: pd.DataFrame, *, max_items_per_source: int
) -> dict[tuple[int, pd.Timestamp], UserBehaviour]:
    """Featurized snapshot rows of every (user, cut-off) that the triplets mention."""
    entities = triplets[[ENTITY_KEY, "cutoff"]].drop_duplicates().rename(columns={"cutoff": TIMESTAMP_COLUMN})
    rows = features_asof(data_dir, entities)
    users = featurize(rows, max_items_per_source=max_items_per_source)
    times = pd.to_datetime(rows[TIMESTAMP_COLUMN], utc=True)
    return {(int(u), t): b for u, t, b in zip(rows[ENTITY_KEY], times, users, strict=True)}


def _plot_losses(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    for column, label in (("loss", "total"), ("ar", "autoregressive"), ("cl", "contrastive")):
        if column in frame and frame[column].abs().sum() > 0:
            ax.plot(frame["step"], frame[column].rolling(10, min_periods=1).mean(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (rolling mean of 10 steps)")
    ax.set_title("InstructUE training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(config: TrainConfig, *, progress: bool = True, on_step: Callable[[int], None] | None = None) -> Path:
    """Train a model and save it to `config.out`; returns the output folder.

    `on_step(step)` is called after every optimizer step. An interruption (Ctrl-C) first saves a checkpoint
    of the last completed step, so `resume` continues from there.

    Raises:
        ConfigError: the output folder holds another run and `resume` is off.
        DataValidationError: no usable UserQA triplets.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    out = Path(config.out)
    checkpoint_path = checkpoint_file(out)
    if out.exists() and not config.resume:
        present = {p.name for p in out.iterdir()}
        if present - UNSTARTED_RUN_FILES:
            raise ConfigError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
        given = (
            {Path(config.userqa).resolve(), instruction_catalog_path(Path(config.userqa)).resolve()}
            if config.userqa
            else set()
        )
        for name in present:  # a run stopped before its first checkpoint: start afresh (its UserQA is rebuilt)
            if (out / name).resolve() not in given:  # but never the UserQA file the run was given
                (out / name).unlink()
    if config.resume and not checkpoint_path.exists():
        raise ConfigError(
            f"--resume given but {checkpoint_path} does not exist (a run stopped before its first checkpoint "
            "starts afresh without --resume)"
        )
    out.mkdir(parents=True, exist_ok=True)
    # Under DDP some trainable parameters get no gradient in a step (e.g. the head with --loss ar).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        kwargs_handlers=[ddp],
        # Each process draws its own batch and steps the schedule once per step: by default accelerate would
        # step it once per process, running warm-up and decay N times too fast on N GPUs.
        step_scheduler_with_optimizer=False,
    )

    # ----- data -----
    userqa_path = Path(config.userqa) if config.userqa else out / USERQA_FILE
    if not userqa_path.exists():
        triplets = build_userqa(config.data, seed=config.seed, progress=progress)
        if accelerator.is_main_process:
            write_userqa(triplets, userqa_path)
    accelerator.wait_for_everyone()  # the other processes read the file the main one wrote
    triplets = pd.read_parquet(userqa_path)
    if triplets.empty:
        raise DataValidationError(f"{userqa_path} holds no UserQA triplets")
    triplets["cutoff"] = pd.to_datetime(triplets["cutoff"], utc=True)
    if config.loss == "ar":
        triplets = triplets[triplets["instruction"] != ""].reset_index(drop=True)

    # ----- model -----
    overrides = {} if config.max_items_per_source is None else {"max_items_per_source": config.max_items_per_source}
    model_config = config_for_preset(config.preset, seed=config.seed, **overrides)
    model = InstructUEModel.create(model_config)
    users = load_training_users(config.data, triplets, max_items_per_source=model_config.max_items_per_source)
    texts = sorted({t for u in users.values() for items in u.sources.values() for t in items.summary_texts})
    logger.info("encoding %d distinct item texts once", len(texts))
    model.item_cache.add(texts, model.encode_items(texts))
    model.train()
    model.item_encoder.eval()

    trainable_new = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("llm.")]
    trainable_lora = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("llm.")]
    optimizer = torch.optim.AdamW(
        [{"params": trainable_lora, "lr": config.lr}, {"params": trainable_new, "lr": config.new_params_lr}],
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=config.warmup_steps, total=config.steps)
    )
    step_module = TrainingStep(model, config)
    step_module, optimizer, scheduler = accelerator.prepare(step_module, optimizer, scheduler)

    start_step, history = 0, []
    labels_sha256 = sha256_file(config.data / LABELS)  # the data's identity (its users), wherever the folder lies
    if config.resume:
        state = torch.load(checkpoint_path, weights_only=False)
        _check_resumable(state, config, model, checkpoint_path, labels_sha256)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_step, history = state["step"], state["history"]
        logger.info("resumed at step %d", start_step)
    seconds_before = history[-1]["seconds"] if history else 0.0  # training time of the earlier runs

    step_start_rng: dict[int, tuple] = {}  # RNG state at the start of the step now running, by its index

    def rng_state() -> tuple:
        return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def save_checkpoint(step: int) -> None:
        """Save the state after `step` steps; interrupted in step `step`, its RNG state from before it began."""
        if not accelerator.is_main_process:
            return
        torch_rng, cuda_rng = step_start_rng.get(step) or rng_state()
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        state = {
            "step": step,
            "trainable": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch_rng,
            "cuda_rng": cuda_rng,
            "history": [record for record in history if record["step"] <= step],
            "settings": _run_settings(config),
            "labels_sha256": labels_sha256,
            "steps": config.steps,
        }
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)  # never a half-written checkpoint

    # ----- loop -----
    keys = list(zip(triplets[ENTITY_KEY].astype(int), triplets["cutoff"], strict=True))
    by_family = {
        name: np.flatnonzero(triplets["family"].to_numpy() == name) for name in sorted(triplets["family"].unique())
    }
    use_ar, use_cl = config.loss in ("both", "ar"), config.loss in ("both", "contrastive")
    started = time.monotonic()
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc="train",
        disable=not (progress and accelerator.is_main_process),
    )

    applied = [start_step]  # optimizer steps in the weights

    def _train_step(step: int) -> dict[str, float]:
        """One optimizer step on the batch of `step`; returns its record."""
        step_start_rng.clear()
        step_start_rng[step] = rng_state()  # dropout draws from it: a resumed step draws the same
        rng = np.random.default_rng([config.seed, step, accelerator.process_index])
        picked = sample_batch(by_family, rng, batch_size=config.batch_size, families=config.families_per_batch)
        batch = triplets.iloc[picked]
        behaviours = [users[keys[i]] for i in picked]
        answers = batch["answer"].tolist()
        inputs = model.builder.build(behaviours, batch["instruction"].tolist(), answers if use_ar else None)
        tensors = {k: v.to(accelerator.device) for k, v in model.tensors(inputs).items()}
        labels = torch.from_numpy(inputs.labels).to(accelerator.device) if use_ar else None
        answer_ids = answer_mask = false_negatives = None
        if use_cl:
            ids, mask = model.builder.build_answers(answers)
            answer_ids = torch.from_numpy(ids).to(accelerator.device)
            answer_mask = torch.from_numpy(mask).to(accelerator.device)
            fn = false_negative_mask(answers, threshold=config.false_negative_threshold)
            false_negatives = torch.from_numpy(fn).to(accelerator.device)

        with accelerator.autocast():
            losses = step_module(tensors, labels, answer_ids, answer_mask, false_negatives)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_([*trainable_lora, *trainable_new], config.grad_clip)
        record = {k: v.item() for k, v in losses.items()}  # lr: the rate this step uses
        record.update(step=step + 1, lr=scheduler.get_last_lr()[0], seconds=seconds_before + time.monotonic() - started)
        history.append(record)  # a checkpoint keeps the records of the steps it holds (`save_checkpoint`)
        optimizer.step()
        scheduler.step()
        applied[0] = step + 1  # from here the weights hold this step
        return record

    def completed() -> int:
        return applied[0]

    try:
        for step in bar:
            record = _train_step(step)
            bar.set_postfix(loss=f"{record['loss']:.3f}", ar=f"{record['ar']:.3f}", cl=f"{record['cl']:.3f}")
            if on_step is not None:
                on_step(step + 1)
            if (step + 1) % config.checkpoint_every == 0:
                save_checkpoint(step + 1)
            if config.time_budget_minutes and time.monotonic() - started > config.time_budget_minutes * 60:
                logger.info("time budget of %.1f min reached at step %d", config.time_budget_minutes, step + 1)
                break
    except KeyboardInterrupt:
        save_checkpoint(completed())
        logger.warning("interrupted after step %d: checkpoint saved; rerun with --resume to continue", completed())
        raise
    finally:
        bar.close()

    # ----- save -----
    if accelerator.is_main_process:
        save_checkpoint(completed())
        model.eval()
        model.save_pretrained(out)
        (out / "train_config.json").write_text(config.model_dump_json(indent=2))
        with open(out / LOSSES_CSV, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "loss", "ar", "cl", "lr", "seconds"])
            writer.writeheader()
            writer.writerows(history)
        _plot_losses(history, out / LOSSES_PNG)
        summary = {"steps": len(history), "final": history[-1] if history else None}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return out
