"""Probe and metric code against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.evaluate.metrics import (
    binary_probe,
    fold_probes,
    ks_statistic,
    out_of_fold_scores,
    paired_auc_difference_interval,
    ranking_probe,
    recall_at_k,
)


def test_binary_probe_reproduces_scikit_learns_own_auc():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 5))
    labels = (features[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(int)
    reference = cross_val_predict(
        make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=[0.01, 0.1, 1.0],
                cv=3,
                scoring="roc_auc",
                max_iter=500,
                tol=1e-3,
                l1_ratios=(0.0,),
                use_legacy_attributes=False,
            ),
        ),
        features,
        labels,
        cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=0),
        method="predict_proba",
    )[:, 1]
    got = binary_probe(features, labels)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, reference), abs=1e-12)
    assert 0.7 < got["auc"] < 1.0


def test_served_scores_come_from_probes_fit_on_the_other_representation():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(150, 4))
    labels = (features[:, 0] + 0.5 * rng.normal(size=150) > 0).astype(int)

    def served(other: np.ndarray) -> np.ndarray:
        scores = np.zeros(len(labels))
        for probe, test in fold_probes(features, labels):
            scores[test] = probe.predict_proba(other[test])[:, 1]
        return scores

    own = out_of_fold_scores(features, labels)
    assert np.array_equal(served(features.copy()), own)
    # A slightly perturbed copy is scored by the same probes: close to, but not equal to, the fp32 scores.
    perturbed = served(features + 1e-3 * rng.normal(size=features.shape))
    assert not np.array_equal(perturbed, own)
    assert np.abs(perturbed - own).max() < 0.01
    # The sign flip of the informative column turns the fitted probes' ranking around.
    flipped = features.copy()
    flipped[:, 0] *= -1
    assert roc_auc_score(labels, served(flipped)) < 0.3


def test_ks_equals_hand_computed_value():
    # Positives' scores {0.35, 0.8}, negatives' {0.1, 0.4}: above 0.8 half the positives and no negative pass,
    # so the largest CDF gap is 0.5.
    assert ks_statistic(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.5)
    assert ks_statistic(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)


def test_recall_at_k_on_a_hand_case():
    ranked = np.array([["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "c", "b"]], dtype=object)
    truth = np.array(["b", "a", "c", "b"], dtype=object)
    assert recall_at_k(truth, ranked, 1) == pytest.approx(1 / 4)
    assert recall_at_k(truth, ranked, 2) == pytest.approx(2 / 4)
    assert recall_at_k(truth, ranked, 3) == pytest.approx(4 / 4)


def test_ranking_probe_learns_a_separable_multiclass_task():
    rng = np.random.default_rng(0)
    labels = rng.choice(["x", "y", "z", "w"], size=300)
    centers = {"x": [3, 0], "y": [0, 3], "z": [-3, 0], "w": [0, -3]}
    features = np.array([centers[label] for label in labels]) + rng.normal(size=(300, 2))
    assert ranking_probe(features, labels, k=1)["recall_at_k"] > 0.85
    assert ranking_probe(features, labels, k=4)["recall_at_k"] == pytest.approx(1.0)


def test_paired_auc_interval_is_zero_for_an_order_preserving_copy_and_tells_a_real_gain_from_noise():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=600)
    weak = labels + 2.0 * rng.normal(size=600)
    assert paired_auc_difference_interval(labels, weak, 3 * weak + 1) == (0.0, 0.0)  # same ranking, same AUC
    strong = labels + 0.5 * rng.normal(size=600)
    gain = roc_auc_score(labels, strong) - roc_auc_score(labels, weak)
    low, high = paired_auc_difference_interval(labels, weak, strong)
    assert 0 < low < gain < high
    jitter = weak + 0.01 * rng.normal(size=600)  # a tiny perturbation: its interval straddles zero and is narrow
    low, high = paired_auc_difference_interval(labels, weak, jitter)
    assert low <= 0 <= high and high - low < 0.01
    with pytest.raises(ValueError, match="single class"):
        paired_auc_difference_interval(np.ones(10), weak[:10], strong[:10], draws=5)


def test_int8_parity_measures_the_binary_tasks_the_labels_hold():
    import pandas as pd

    from instructue_plugin.errors import DataValidationError
    from training.evaluate.variant_parity import binary_tasks_of

    synthetic = pd.DataFrame(columns=["user_id", "fund_purchase", "churn", "next_category"])
    assert binary_tasks_of(synthetic) == ["fund_purchase", "churn"]
    assert binary_tasks_of(pd.DataFrame(columns=["user_id", "gender", "age_bracket"])) == ["gender", "age_bracket"]
    with pytest.raises(DataValidationError, match="none of the binary tasks"):
        binary_tasks_of(pd.DataFrame(columns=["user_id", "next_genre"]))
