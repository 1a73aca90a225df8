"""Does the int8 export keep the embeddings' quality? Probe AUC of int8 vs fp32 on the evaluation tasks.

Both variants of one export embed the same evaluation users under each binary task's instruction and under
none; the same 5-fold probe scores both. DESIGN §8 asks for an AUC within 0.005 of fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import binary_probe
from .runner import BINARY_TASKS, EvalSettings, eval_rows

MAX_AUC_DROP = 0.005


def int8_probe_parity(
    export_dir: Path, data_dir: Path, *, max_users: int | None = None, report_path: Path
) -> dict[str, Any]:
    """Per task and instruction, the probe AUC of fp32 and int8 embeddings and their difference; writes JSON."""
    from instructue_plugin.onnx_runtime import OnnxEmbedder

    from ..instructions import task_instructions

    labels, features = eval_rows(EvalSettings(data=data_dir, model=export_dir, max_users=max_users))
    variants = {v: OnnxEmbedder.from_export(export_dir, variant=v) for v in ("fp32", "int8")}
    rows: dict[str, dict[str, Any]] = {}
    cosines = []
    for task in BINARY_TASKS:
        for kind, instruction in (("instructed", task_instructions(task)["canonical"][0]), ("general", None)):
            vectors = {v: e.embed(features, instruction) for v, e in variants.items()}
            both = np.isfinite(vectors["fp32"]).all(1) & np.isfinite(vectors["int8"]).all(1)
            cosines.append((vectors["fp32"][both] * vectors["int8"][both]).sum(1))
            auc = {v: binary_probe(vectors[v][both], labels[task].to_numpy()[both])["auc"] for v in vectors}
            rows[f"{task}/{kind}"] = {**auc, "difference": auc["int8"] - auc["fp32"]}
    worst = max(abs(r["difference"]) for r in rows.values())
    all_cosines = np.concatenate(cosines)
    report = {
        "export": str(export_dir),
        "users": len(labels),
        "aucs": rows,
        "max_abs_auc_difference": worst,
        "cosine_int8_vs_fp32": {"min": float(all_cosines.min()), "mean": float(all_cosines.mean())},
        "target": {"max_abs_auc_difference": MAX_AUC_DROP, "met": bool(worst <= MAX_AUC_DROP)},
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    return report
