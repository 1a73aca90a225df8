"""`instructue evaluate`: every method on every task, noise robustness and instruction awareness.

Protocol (DESIGN §5): the eval users' feature rows at the cut-off are embedded once per method (frozen), a
5-fold logistic-regression probe is fitted per task, and out-of-fold scores give AUC/KS (binary tasks) or
Recall@K (recommendation tasks). Noise robustness re-scores the main methods (the baselines, instructed with the
canonical instruction, general; not the paraphrases or ablations) on the same users after injecting extra
random events; instruction awareness probes each binary task with embeddings made under each task's
instruction and under none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

import instructue_plugin
from instructue_plugin.errors import ConfigError, DataValidationError
from instructue_plugin.schema import ENTITY_KEY, TIMESTAMP_COLUMN

from ..data import features_asof, read_labels
from ..instructions import task_instructions
from ..synth.generator import BINARY_TASKS, RANKING_SIZE
from .baselines import bag_of_items_matrix, behaviours, mean_item_matrix, profile_matrix, zero_shot_llm_matrix
from .metrics import FOLDS, binary_probe, ks_statistic, ranking_probe, recall_at_k

logger = logging.getLogger(__name__)

# The generator's ranking tasks -> K of Recall@K (next mini-program: K = the oracle ranking's length).
RANKING_TASKS = {"next_category": 3, "next_miniprogram": RANKING_SIZE}
TASKS = (*BINARY_TASKS, *RANKING_TASKS)
BASELINES = ("profile_lr", "bag_of_items", "mean_item", "zero_shot_llm")
INSTRUCTED, UNSEEN, GENERAL = "instructue_instructed", "instructue_instructed_unseen", "instructue_general"


@dataclass
class EvalSettings:
    """Inputs of one evaluation run."""

    data: Path
    model: Path
    noise_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    ablation_models: dict[str, Path] = field(default_factory=dict)  # method name -> model folder
    max_users: int | None = None
    seed: int = 0
    batch_size: int = 32
    tasks: tuple[str, ...] = TASKS
    binary_tasks: tuple[str, ...] = BINARY_TASKS
    ranking_tasks: dict[str, int] = field(default_factory=lambda: dict(RANKING_TASKS))
    instructions: Callable[[str], dict[str, list[str]]] = task_instructions
    noise: Callable[..., pd.DataFrame] | None = None  # inject_noise(features, rate=, seed=)


def eval_rows(settings: EvalSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eval users' labels and their feature rows at the cut-off (same order).

    Raises:
        ConfigError: `max_users` below 1.
    """
    if settings.max_users is not None and settings.max_users < 1:
        raise ConfigError(f"max_users must be at least 1, got {settings.max_users}")
    labels = read_labels(settings.data, required=(ENTITY_KEY, "split", "cutoff"))
    labels = labels[labels["split"] == "eval"].sort_values(ENTITY_KEY).reset_index(drop=True)
    if settings.max_users is not None and len(labels) > settings.max_users:
        labels = labels.sample(settings.max_users, random_state=settings.seed).sort_values(ENTITY_KEY)
        labels = labels.reset_index(drop=True)
    entities = pd.DataFrame({ENTITY_KEY: labels[ENTITY_KEY], TIMESTAMP_COLUMN: labels["cutoff"]})
    return labels, features_asof(settings.data, entities)


def require_probe_ready(labels: pd.DataFrame, tasks: Sequence[str], binary_tasks: Sequence[str]) -> None:
    """Refuse labels a probe cannot score, before any embedding work.

    Raises:
        DataValidationError: a task's label column is missing (e.g. a MovieLens folder evaluated as synthetic),
            or a binary task has fewer than `FOLDS` positives or negatives among the eval users.
    """
    missing = [task for task in tasks if task not in labels.columns]
    if missing:
        raise DataValidationError(
            f"the labels have no column for task(s) {missing}; columns: {list(labels.columns)} "
            "(is --dataset right for this data folder?)"
        )
    for task in binary_tasks:
        positives = int(labels[task].sum())
        negatives = len(labels) - positives
        if min(positives, negatives) < FOLDS:
            raise DataValidationError(
                f"task {task!r} has {positives} positive and {negatives} negative eval users; a {FOLDS}-fold "
                f"probe needs at least {FOLDS} of each (evaluate more users)"
            )


class Representations:
    """Computes and memoizes every method's matrix for one set of feature rows."""

    def __init__(self, features: pd.DataFrame, embedders: dict[str, Any], *, batch_size: int, progress: bool):
        self.features = features
        self.embedders = embedders
        self.batch_size = batch_size
        self.progress = progress
        self.users = behaviours(features)
        self._memo: dict[tuple[str, str], Any] = {}

    def embedding(self, model: str, instruction: str) -> np.ndarray:
        """Embeddings of every row by `model` ("main" or an ablation) under `instruction` ("" = general)."""
        key = (model, instruction)
        if key not in self._memo:
            embedder = self.embedders[model]
            with tqdm(
                total=len(self.features),
                desc=f"embed {model}: {instruction[:40]!r}",
                disable=not self.progress,
                leave=False,
            ) as bar:
                vectors = embedder.embed(
                    self.features, instruction or None, batch_size=self.batch_size, on_batch=bar.update
                )
            self._memo[key] = np.nan_to_num(vectors)
        return self._memo[key]

    def baseline(self, name: str) -> Any:
        """The matrix of a baseline method."""
        key = ("baseline", name)
        if key not in self._memo:
            self._memo[key] = self._baseline(name)
        return self._memo[key]

    def _baseline(self, name: str) -> Any:
        embedder = self.embedders["main"]
        if name == "profile_lr":
            return profile_matrix(self.users)
        if name == "bag_of_items":
            return bag_of_items_matrix(self.users)
        if name == "mean_item":
            return mean_item_matrix(self.users, embedder.item_vectors)
        if name == "zero_shot_llm":
            from instructue_plugin.backbones import load_llm_tokenizer, load_pretrained_llm

            llm = load_pretrained_llm(embedder.config).eval()
            tokenizer = load_llm_tokenizer(embedder.config)
            return zero_shot_llm_matrix(
                self.features, self.users, llm=llm, tokenizer=tokenizer, max_items=embedder.config.max_items_per_source
            )
        raise ValueError(f"unknown baseline {name!r}")


def _score(task: str, matrix: Any, labels: pd.DataFrame, settings: EvalSettings) -> dict[str, float]:
    if task in settings.ranking_tasks:
        known = labels[task].notna().to_numpy()
        rows = matrix[np.flatnonzero(known)]
        return ranking_probe(rows, labels.loc[known, task].to_numpy(), k=settings.ranking_tasks[task])
    return binary_probe(matrix, labels[task].to_numpy())


def oracle_scores(labels: pd.DataFrame, settings: EvalSettings) -> dict[str, dict[str, float]]:
    """The generator's true probabilities scored like a method: the ceiling of every method."""
    oracle: dict[str, dict[str, float]] = {}
    for task in settings.tasks:
        if f"oracle_{task}" not in labels:
            continue
        if task in settings.ranking_tasks:
            known = labels[task].notna().to_numpy()
            k = settings.ranking_tasks[task]
            ranked = np.array(
                [list(r)[:k] + [None] * (k - len(r)) for r in labels.loc[known, f"oracle_{task}_ranking"]], dtype=object
            )
            oracle[task] = {"recall_at_k": recall_at_k(labels.loc[known, task].to_numpy(), ranked, k), "k": k}
        else:
            y, p = labels[task].to_numpy().astype(int), labels[f"oracle_{task}"].to_numpy()
            oracle[task] = {"auc": float(roc_auc_score(y, p)), "ks": ks_statistic(y, p)}
    return oracle


def _method_matrices(reps: Representations, task: str, settings: EvalSettings, *, full: bool) -> dict[str, Any]:
    """Every method's matrix for one task; `full` adds the unseen paraphrases and the ablations."""
    instructions = settings.instructions(task)
    matrices: dict[str, Any] = {name: reps.baseline(name) for name in BASELINES}
    matrices[GENERAL] = reps.embedding("main", "")
    matrices[INSTRUCTED] = reps.embedding("main", instructions["canonical"][0])
    if full:
        unseen = [reps.embedding("main", text) for text in instructions["unseen"]]
        matrices[UNSEEN] = unseen
        for name in settings.ablation_models:
            matrices[name] = reps.embedding(name, instructions["canonical"][0])
    return matrices


def evaluate(settings: EvalSettings, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole protocol; returns the metrics dict (`metrics.json` less its summary, which `write_report` adds)."""
    labels, features = eval_rows(settings)
    require_probe_ready(labels, settings.tasks, settings.binary_tasks)
    logger.info("evaluating %d eval users", len(labels))
    embedders = {"main": instructue_plugin.load(settings.model)}
    embedders.update({name: instructue_plugin.load(path) for name, path in settings.ablation_models.items()})
    clean = Representations(features, embedders, batch_size=settings.batch_size, progress=progress)

    tasks: dict[str, dict[str, Any]] = {}
    for task in tqdm(settings.tasks, desc="tasks", disable=not progress):
        results: dict[str, Any] = {}
        for method, matrix in _method_matrices(clean, task, settings, full=True).items():
            if method == UNSEEN:
                scores = [_score(task, m, labels, settings) for m in matrix]
                results[method] = {
                    key: scores[0][key] if key == "k" else float(np.mean([s[key] for s in scores])) for key in scores[0]
                }
            else:
                results[method] = _score(task, matrix, labels, settings)
        tasks[task] = results

    awareness = instruction_awareness(clean, labels, settings)
    noise = noise_robustness(features, embedders, labels, settings, clean=clean, progress=progress)
    return {
        "tasks": tasks,
        "oracle": oracle_scores(labels, settings),
        "noise": noise,
        "instruction_awareness": awareness,
        "users": len(labels),
    }


def instruction_awareness(reps: Representations, labels: pd.DataFrame, settings: EvalSettings) -> dict[str, Any]:
    """AUC of each binary task (rows) probed on embeddings made under each task's instruction or none."""
    columns = {task: settings.instructions(task)["canonical"][0] for task in settings.binary_tasks}
    columns["general"] = ""
    matrix = {
        row: {
            col: binary_probe(reps.embedding("main", text), labels[row].to_numpy())["auc"]
            for col, text in columns.items()
        }
        for row in settings.binary_tasks
    }
    return {"instructions": columns, "auc": matrix}


def noise_robustness(
    features: pd.DataFrame,
    embedders: dict[str, Any],
    labels: pd.DataFrame,
    settings: EvalSettings,
    *,
    clean: Representations,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """Mean AUC over the binary tasks per method at each injected-noise rate."""
    from ..synth.noise import inject_noise

    add_noise = settings.noise or inject_noise
    out: dict[str, dict[str, float]] = {}
    for rate in tqdm(settings.noise_rates, desc="noise", disable=not progress):
        reps = (
            clean
            if rate == 0
            else Representations(
                add_noise(features, rate=rate, seed=settings.seed),
                {"main": embedders["main"]},
                batch_size=settings.batch_size,
                progress=progress,
            )
        )
        per_method: dict[str, list[float]] = {}
        for task in settings.binary_tasks:
            for method, matrix in _method_matrices(reps, task, settings, full=False).items():
                per_method.setdefault(method, []).append(_score(task, matrix, labels, settings)["auc"])
        out[f"{rate:g}"] = {method: float(np.mean(values)) for method, values in per_method.items()}
    return out
