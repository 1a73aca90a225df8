"""Probe and metrics: a logistic-regression probe with stratified 5-fold cross-validation.

Embeddings are frozen; the probe is scikit-learn's logistic regression on standardized features, with its
regularization chosen by an inner 3-fold search (binary tasks) so that every representation, wide or narrow,
dense or sparse, gets a fair probe. Every score is out-of-fold: each user is scored by a probe that never
saw them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

FOLDS = 5
PROBE_SEED = 0
PROBE_CS = (0.01, 0.1, 1.0)  # inverse regularization strengths searched by the binary probe
RANKING_C = 0.1  # fixed for the many-class probes: a search there costs too much


def ks_statistic(labels: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: the largest gap between the positives' and negatives' score CDFs."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.max(tpr - fpr))


def recall_at_k(true_labels: np.ndarray, ranked: np.ndarray, k: int) -> float:
    """Share of users whose true label is among their top-k ranked candidates; `ranked` is (n, >=k)."""
    hits = [truth in row[:k] for truth, row in zip(true_labels, ranked, strict=True)]
    return float(np.mean(hits))


def paired_auc_difference_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    other_scores: np.ndarray,
    *,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = PROBE_SEED,
) -> tuple[float, float]:
    """Bootstrap interval of AUC(other_scores) - AUC(scores) on the same users (resampled together).

    Draws with a single class are skipped. Use it to tell a difference from the sampling noise of the users.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(draws):
        pick = rng.integers(len(labels), size=len(labels))
        if np.unique(labels[pick]).size < 2:
            continue
        differences.append(roc_auc_score(labels[pick], other_scores[pick]) - roc_auc_score(labels[pick], scores[pick]))
    if not differences:
        raise ValueError("every bootstrap draw holds a single class: the AUC difference is undefined")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def make_probe(features, *, ranking: bool = False) -> Pipeline:
    """Standardize (without centering sparse input), then logistic regression."""
    scaler = StandardScaler(with_mean=not sparse.issparse(features))
    if ranking:
        return make_pipeline(scaler, LogisticRegression(C=RANKING_C, max_iter=300, tol=1e-3))
    search = LogisticRegressionCV(
        Cs=list(PROBE_CS),
        cv=3,
        scoring="roc_auc",
        max_iter=500,
        tol=1e-3,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    return make_pipeline(scaler, search)


def fold_probes(
    features: np.ndarray, labels: np.ndarray, *, seed: int = PROBE_SEED
) -> Iterator[tuple[Pipeline, np.ndarray]]:
    """For each stratified fold, a binary probe fit on the other folds and the fold's held-out row indices.

    Scoring the held-out rows of another representation of the same users (e.g. an int8 variant) with these
    probes shows what a downstream model trained on `features` sees when it is served the other.
    """
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for train, test in folds.split(np.zeros(len(labels)), labels):
        yield make_probe(features).fit(features[train], labels[train]), test


def out_of_fold_scores(features: np.ndarray, labels: np.ndarray, *, seed: int = PROBE_SEED) -> np.ndarray:
    """Out-of-fold positive-class probabilities of a binary probe."""
    scores = np.zeros(len(labels), dtype=float)
    for probe, test in fold_probes(features, labels, seed=seed):
        scores[test] = probe.predict_proba(features[test])[:, 1]
    return scores


def binary_probe(features: np.ndarray, labels: np.ndarray, *, seed: int = PROBE_SEED) -> dict[str, float]:
    """AUC and KS of a 5-fold logistic-regression probe on a binary task."""
    labels = np.asarray(labels, dtype=int)
    scores = out_of_fold_scores(features, labels, seed=seed)
    return {"auc": float(roc_auc_score(labels, scores)), "ks": ks_statistic(labels, scores)}


def ranking_probe(features: np.ndarray, labels: np.ndarray, *, k: int, seed: int = PROBE_SEED) -> dict[str, float]:
    """Recall@k of a 5-fold multinomial logistic-regression probe; classes too rare to split are kept as misses."""
    labels = np.asarray(labels, dtype=object)
    classes, counts = np.unique(labels, return_counts=True)
    frequent = set(classes[counts >= FOLDS])
    usable = np.array([label in frequent for label in labels])
    ranked = np.full((len(labels), k), None, dtype=object)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    idx = np.flatnonzero(usable)
    if len(frequent) < 2:  # nothing to learn: the one frequent class (if any) is everyone's prediction
        ranked[idx, 0] = next(iter(frequent), None)
        return {"recall_at_k": recall_at_k(labels, ranked, k), "k": k}
    kept = features[idx]
    for train, test in folds.split(np.zeros(len(idx)), labels[idx]):
        probe = make_probe(kept, ranking=True).fit(kept[train], labels[idx][train])
        order = np.argsort(-probe.predict_proba(kept[test]), axis=1)[:, :k]
        ranked[idx[test], : order.shape[1]] = probe.classes_[order]
    return {"recall_at_k": recall_at_k(labels, ranked, k), "k": k}
