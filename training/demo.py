"""`instructue demo`: the whole path on the embedded default, narrated for a newcomer.

generate data -> build UserQA and train the `smol-cpu` preset briefly -> evaluate -> export to ONNX ->
`feast apply` -> materialize the raw views and the named instructions' embeddings -> show two users: their
general and instructed embeddings read back from Feast, their nearest users under two instructions, and what
the model says about them. Each step reuses its output when it already exists (`fresh=True` redoes all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from instructue_plugin import settings
from instructue_plugin.errors import ConfigError
from instructue_plugin.schema import SEQUENCE_SOURCES

from .data import features_asof, read_labels
from .userqa import top_categories

DEMO_USERS = 2000
DEMO_STEPS = 150  # about 4 minutes of smol-cpu training on 2 cores: enough to show the path, not for quality
DEMO_EVAL_USERS = 300
FUND = "Represent this user for predicting fund purchases in the next 30 days."
TRAVEL = "Represent this user for a travel coupon campaign."
QUESTION = "What does this user mostly spend on?"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes: the checkout's `data/demo` and `models/demo` (the defaults of INSTRUCTUE_DATA and
    INSTRUCTUE_MODEL), whatever those variables say, so that the demo never overwrites a user's own data or model."""

    data: Path
    model: Path
    export: Path
    repo: Path
    report: Path

    @classmethod
    def default(cls) -> DemoPaths:
        root = settings.PROJECT_ROOT
        return cls(
            data=settings.DEFAULT_DATA_DIR,
            model=root / "models" / "demo" / "model",
            export=settings.DEFAULT_MODEL_DIR,
            repo=root / "feast_repo",
            report=root / "reports" / "demo",
        )


def _step(echo: Callable[[str], None], title: str) -> Callable[[], None]:
    echo(f"\n== {title}")
    started = time.monotonic()
    return lambda: echo(f"   done in {time.monotonic() - started:.0f} s")


def _describe(row: pd.Series) -> str:
    return ", ".join(top_categories(row)) or "no payments"


def run_demo(
    *,
    echo: Callable[[str], None],
    fresh: bool = False,
    paths: DemoPaths | None = None,
    preset: str = "smol-cpu",
    users: int = DEMO_USERS,
    steps: int = DEMO_STEPS,
    eval_users: int = DEMO_EVAL_USERS,
) -> None:
    """Run every step of the demo, printing what a newcomer should see through `echo`.

    The defaults are the documented demo; tests run the same path on the `tiny` preset and fewer users.
    """
    from instructue_plugin.embedder import TorchEmbedder
    from instructue_plugin.feast_store import open_store
    from instructue_plugin.materialize import materialize_embeddings
    from instructue_plugin.onnx_export import export_is_of, export_model
    from instructue_plugin.onnx_runtime import OnnxEmbedder

    from .evaluate.report import write_report
    from .evaluate.runner import BINARY_TASKS, EvalSettings, evaluate
    from .synth import generate
    from .trainer import TrainConfig, checkpoint_file, train

    paths = paths or DemoPaths.default()
    started = time.monotonic()
    if fresh:
        for folder in (paths.data, paths.model, paths.export, paths.report):
            shutil.rmtree(folder, ignore_errors=True)

    done = _step(echo, f"1. synthetic data: {users} users -> {paths.data}")
    if not (paths.data / "labels.parquet").exists():
        generate(paths.data, users=users, seed=0, overwrite=True, progress=True)
    done()

    done = _step(echo, f"2. UserQA + training the {preset} preset for {steps} steps -> {paths.model}")
    if not (paths.model / "model.safetensors").exists():
        resume = checkpoint_file(paths.model).exists()  # an interrupted demo continues its run
        if resume:
            echo("   continuing the interrupted run from its checkpoint")
        else:
            shutil.rmtree(paths.model, ignore_errors=True)
        train(
            TrainConfig(
                data=paths.data,
                out=paths.model,
                preset=preset,
                steps=steps,
                warmup_steps=min(15, steps),
                resume=resume,
            )
        )
    echo(f"   loss curve: {paths.model / 'losses.png'}")
    done()

    done = _step(echo, f"3. evaluation on {eval_users} held-out users -> {paths.report}")
    if not (paths.report / "metrics.json").exists():
        metrics = evaluate(
            EvalSettings(data=paths.data, model=paths.model, max_users=eval_users, noise_rates=(0.0, 0.5))
        )
        summary = write_report(metrics, paths.report, binary_tasks=list(BINARY_TASKS), title="InstructUE demo")
        for method, auc in sorted(summary["mean_auc"].items(), key=lambda kv: -kv[1]):
            echo(f"   mean AUC {auc:.3f}  {method}")
        echo(f"   oracle   {summary['oracle_mean_auc']:.3f}  (the ceiling; a short demo run is far from it)")
    done()

    done = _step(echo, f"4. ONNX export -> {paths.export}")
    if not export_is_of(paths.export, paths.model):  # none yet, or made from other weights: (re)export
        export_model(paths.model, paths.export)
    done()

    done = _step(echo, f"5. feast apply + materialize ({paths.repo})")
    env = dict(os.environ, INSTRUCTUE_DATA=str(paths.data), INSTRUCTUE_MODEL=str(paths.export))
    feast = str(Path(sys.executable).with_name("feast"))
    applied = subprocess.run([feast, "apply"], cwd=paths.repo, env=env, capture_output=True, text=True)
    if applied.returncode != 0:
        raise ConfigError(f"`feast apply` failed in {paths.repo}:\n{(applied.stderr or applied.stdout)[-2000:]}")
    store = open_store(paths.repo)
    now = datetime.now(UTC)
    views = [s.name for s in SEQUENCE_SOURCES] + ["profile"]
    store.materialize(start_date=now - timedelta(days=3650), end_date=now, feature_views=views)
    summary = materialize_embeddings(paths.repo, model_path=paths.export)
    echo(f"   {summary.describe()}")
    done()

    done = _step(echo, "6. two users, read back from Feast")
    labels = read_labels(paths.data)
    held_out = labels[labels["split"] == "eval"]
    fund_buyers = held_out.loc[held_out["fund_purchase"] == 1, "user_id"].astype(int).tolist()
    travellers = held_out.loc[held_out["travel_coupon"] == 1, "user_id"].astype(int).tolist()
    if not fund_buyers or not set(travellers) - set(fund_buyers[:1]):
        raise ConfigError(
            f"the {len(held_out)} held-out users lack a fund buyer and another travel-coupon user: generate more users"
        )
    chosen = [fund_buyers[0], next(u for u in travellers if u != fund_buyers[0])]
    rows = [{"user_id": u, "instruction_id": i} for u in chosen for i in ("general", "fund", "travel")]
    online = store.get_online_features(features=["user_embedding_materialized:embedding"], entity_rows=rows)
    for row, vector in zip(rows, online.to_dict()["embedding"], strict=True):
        shown = np.round(np.asarray(vector[:6]), 3) if vector is not None else None
        echo(f"   user {row['user_id']:>5} {row['instruction_id']:<8} {shown} ...")

    cutoff = pd.Timestamp(labels["cutoff"].iloc[0])
    others = [u for u in held_out["user_id"].astype(int) if u not in chosen]
    pool = chosen + others[: 600 - len(chosen)]  # the two users and their neighbours' candidates
    features = features_asof(paths.data, pd.DataFrame({"user_id": pool, "event_timestamp": [cutoff] * len(pool)}))
    embedder = OnnxEmbedder.from_export(paths.export)
    describe = {int(u): _describe(r) for u, (_, r) in zip(pool, features.iterrows(), strict=True)}
    for name, instruction in (("fund", FUND), ("travel", TRAVEL)):
        vectors = embedder.embed(features, instruction)
        for user in chosen:
            me = vectors[pool.index(user)]
            similarity = vectors @ me
            similarity[pool.index(user)] = -np.inf
            nearest = [pool[i] for i in np.argsort(-similarity)[:3]]
            echo(
                f"   [{name:<6}] nearest to {user} ({describe[user]}): "
                + "; ".join(f"{n} ({describe[n]})" for n in nearest)
            )
    done()

    done = _step(echo, f"7. the model describes the two users: {QUESTION!r}")
    model = TorchEmbedder.from_pretrained(paths.model)
    for user in chosen:
        row = features.iloc[[pool.index(user)]]
        echo(f"   user {user} (actual top categories: {describe[user]}): {model.answer(row, QUESTION)!r}")
    echo(
        f"   ({steps} training steps: answers are rough this early; after 1,500 steps they take the trained form,"
        " see reports/README.md)"
    )
    done()
    echo(f"\nDemo finished in {(time.monotonic() - started) / 60:.1f} min. Next: README.md, `instructue --help`.")
