"""Does the int8 export keep the embeddings' quality? Probe AUC of int8 vs fp32 on the evaluation tasks.

Both variants of one export embed the same evaluation users under each binary task's instruction and under
none (the synthetic tasks, or MovieLens's on a MovieLens folder). DESIGN §8 asks for an AUC within 0.005 of
fp32. Two protocols are reported:

- served: each fold's probe is fit on fp32 embeddings and scores the held-out users' fp32 and int8 embeddings,
  the situation of a downstream model trained once and then served the int8 variant; the difference is the int8
  graph's own effect (the target applies here), with a 95 % paired bootstrap interval over the users (how much
  of it the users' sampling alone could move);
- refit: a probe fit on int8 embeddings from scratch. Its regularization search is discrete, so this difference
  also holds the probe's own instability; `probe_noise` measures that instability on fp32 alone (the same
  embeddings, another fold split), so the two can be told apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from instructue_plugin.errors import DataValidationError

from .metrics import PROBE_SEED, binary_probe, fold_probes, paired_auc_difference_interval
from .runner import BINARY_TASKS, EvalSettings, eval_rows, require_probe_ready

MAX_AUC_DROP = 0.005


def binary_tasks_of(labels: pd.DataFrame) -> list[str]:
    """The binary evaluation tasks (synthetic or MovieLens) whose labels the frame holds.

    Raises:
        DataValidationError: none of them.
    """
    from ..movielens import BINARY_TASKS as MOVIELENS_BINARY_TASKS

    tasks = [t for t in (*BINARY_TASKS, *MOVIELENS_BINARY_TASKS) if t in labels.columns]
    if not tasks:
        known = ", ".join((*BINARY_TASKS, *MOVIELENS_BINARY_TASKS))
        raise DataValidationError(
            f"the labels hold none of the binary tasks ({known}); columns: {list(labels.columns)}"
        )
    return tasks


def int8_probe_parity(
    export_dir: Path, data_dir: Path, *, max_users: int | None = None, report_path: Path
) -> dict[str, Any]:
    """Per task and instruction, the probe AUC of fp32 and int8 embeddings (served and refit); writes JSON."""
    from instructue_plugin.onnx_runtime import OnnxEmbedder

    from ..instructions import task_instructions

    labels, features = eval_rows(EvalSettings(data=data_dir, model=export_dir, max_users=max_users))
    tasks = binary_tasks_of(labels)
    require_probe_ready(labels, tasks, tasks)
    variants = {v: OnnxEmbedder.from_export(export_dir, variant=v) for v in ("fp32", "int8")}
    rows: dict[str, dict[str, Any]] = {}
    cosines = []
    for task in tasks:
        for kind, instruction in (("instructed", task_instructions(task)["canonical"][0]), ("general", None)):
            vectors = {v: e.embed(features, instruction) for v, e in variants.items()}
            both = np.isfinite(vectors["fp32"]).all(1) & np.isfinite(vectors["int8"]).all(1)
            fp32, int8 = vectors["fp32"][both], vectors["int8"][both]
            y = labels[task].to_numpy()[both].astype(int)
            cosines.append((fp32 * int8).sum(1))
            own, served = np.zeros(len(y)), np.zeros(len(y))
            for probe, test in fold_probes(fp32, y):  # one fit per fold scores both variants
                own[test] = probe.predict_proba(fp32[test])[:, 1]
                served[test] = probe.predict_proba(int8[test])[:, 1]
            auc_fp32, auc_served = float(roc_auc_score(y, own)), float(roc_auc_score(y, served))
            auc_refit = binary_probe(int8, y)["auc"]
            auc_fp32_other_split = binary_probe(fp32, y, seed=PROBE_SEED + 1)["auc"]
            rows[f"{task}/{kind}"] = {
                "fp32": auc_fp32,
                "int8_served": auc_served,
                "served_difference": auc_served - auc_fp32,
                "served_difference_95ci": paired_auc_difference_interval(y, own, served),
                "int8_refit": auc_refit,
                "refit_difference": auc_refit - auc_fp32,
                "probe_noise": auc_fp32_other_split - auc_fp32,
            }
    all_cosines = np.concatenate(cosines)

    def worst(key: str) -> float:
        return max(abs(r[key]) for r in rows.values())

    report = {
        "export": str(export_dir),
        "users": len(labels),
        "aucs": rows,
        "max_abs_served_difference": worst("served_difference"),
        "max_abs_refit_difference": worst("refit_difference"),
        "max_abs_probe_noise": worst("probe_noise"),
        "cosine_int8_vs_fp32": {"min": float(all_cosines.min()), "mean": float(all_cosines.mean())},
        "target": {
            "max_abs_auc_difference": MAX_AUC_DROP,
            "protocol": "served",
            "met": bool(worst("served_difference") <= MAX_AUC_DROP),
        },
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    return report
