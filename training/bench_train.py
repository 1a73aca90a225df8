"""`instructue bench train`: training throughput (samples/s, seconds per step) per preset on this machine.

Each preset trains a few steps on one fixed batch of UserQA triplets from a small synthetic dataset; the
first steps are warm-up and not timed. A timed step is what a real run's step costs on the model: forward with
both losses, backward, gradient clipping and the AdamW update. Building the batch (featurizing, item lookups,
the false-negative mask) is done once, outside the timing: the figures are the model's, not the data loader's.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from instructue_plugin.config import config_for_preset
from instructue_plugin.errors import ConfigError
from instructue_plugin.model import InstructUEModel

from .losses import false_negative_mask
from .synth import generate
from .trainer import TrainConfig, TrainingStep, load_training_users
from .userqa import build_userqa


def bench_preset(
    preset: str, data_dir: Path, triplets: pd.DataFrame, *, batch_size: int, steps: int, warmup: int
) -> dict[str, Any]:
    """Seconds per optimizer step and samples/s of one preset (median over the timed steps)."""
    if batch_size > len(triplets):
        raise ConfigError(f"batch_size {batch_size} is more than the {len(triplets)} UserQA triplets of the bench data")
    torch.manual_seed(0)
    model = InstructUEModel.create(config_for_preset(preset))
    batch = triplets.sample(batch_size, random_state=0)
    users = load_training_users(data_dir, batch, max_items_per_source=model.config.max_items_per_source)
    behaviours = [users[(int(u), c)] for u, c in zip(batch["user_id"], batch["cutoff"], strict=True)]
    answers = batch["answer"].tolist()
    inputs = model.builder.build(behaviours, batch["instruction"].tolist(), answers)
    tensors = model.tensors(inputs)
    ids, mask = model.builder.build_answers(answers)
    config = TrainConfig(data=data_dir, out=data_dir)
    step = TrainingStep(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        losses = step(
            tensors,
            torch.from_numpy(inputs.labels),
            torch.from_numpy(ids),
            torch.from_numpy(mask),
            torch.from_numpy(false_negative_mask(answers)),
        )
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "batch_size": batch_size,
        "sequence_length": int(inputs.input_ids.shape[1]),
        "seconds_per_step": seconds,
        "samples_per_s": batch_size / seconds,
        "timed_steps": steps,
    }


def run(
    *, presets: tuple[str, ...] = ("tiny", "smol-cpu"), batch_size: int = 16, steps: int = 5, report_path: Path
) -> dict[str, Any]:
    """Benchmark each preset and write the JSON report.

    Raises:
        ConfigError: `batch_size` or `steps` below 1, or more triplets per batch than the bench data has.
    """
    if batch_size < 1 or steps < 1:
        raise ConfigError(f"batch_size and steps must be at least 1, got {batch_size} and {steps}")
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        generate(data_dir, users=300, seed=0, progress=False)
        triplets = build_userqa(data_dir, seed=0, progress=False)
        triplets["cutoff"] = pd.to_datetime(triplets["cutoff"], utc=True)
        results = {
            preset: bench_preset(preset, data_dir, triplets, batch_size=batch_size, steps=steps, warmup=2)
            for preset in presets
        }
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "presets": results,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [f"{'preset':<10} {'batch':>5} {'seq len':>7} {'s/step':>8} {'samples/s':>10}"]
    for preset, r in report["presets"].items():
        lines.append(
            f"{preset:<10} {r['batch_size']:>5} {r['sequence_length']:>7} "
            f"{r['seconds_per_step']:>8.2f} {r['samples_per_s']:>10.2f}"
        )
    return "\n".join(lines)
