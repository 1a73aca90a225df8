"""InfoNCE with false-negative masking, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.losses import false_negative_mask, info_nce

USER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
ANSWER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
TAU = 0.5


def _row_loss(logits: list[float], positive: int) -> float:
    return -logits[positive] + math.log(sum(math.exp(v) for v in logits))


def test_info_nce_equals_hand_computed_value_on_3x3():
    # Similarities u_i . a_j divided by tau, written out by hand.
    s = [[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.6, 0.8, -0.8]]
    rows = [[v / TAU for v in r] for r in s]
    cols = [[rows[i][j] for i in range(3)] for j in range(3)]
    expected = 0.5 * (
        sum(_row_loss(rows[i], i) for i in range(3)) / 3 + sum(_row_loss(cols[j], j) for j in range(3)) / 3
    )
    got = info_nce(USER, ANSWER, temperature=TAU)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_false_negative_mask_removes_exactly_the_masked_pairs():
    mask = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    s = [[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.6, 0.8, -0.8]]
    rows = [[v / TAU for v in r] for r in s]
    # Row 0 loses column 1, row 1 loses column 0; same for the columns' softmax.
    row_terms = [
        _row_loss([rows[0][0], rows[0][2]], 0),
        _row_loss([rows[1][1], rows[1][2]], 0),
        _row_loss(rows[2], 2),
    ]
    cols = [[rows[i][j] for i in range(3)] for j in range(3)]
    col_terms = [
        _row_loss([cols[0][0], cols[0][2]], 0),
        _row_loss([cols[1][1], cols[1][2]], 0),
        _row_loss(cols[2], 2),
    ]
    expected = 0.5 * (sum(row_terms) / 3 + sum(col_terms) / 3)
    got = info_nce(USER, ANSWER, temperature=TAU, false_negatives=mask)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # A mask on the diagonal never removes the positive.
    assert float(info_nce(USER, ANSWER, temperature=TAU, false_negatives=torch.eye(3, dtype=torch.bool))) == (
        pytest.approx(float(info_nce(USER, ANSWER, temperature=TAU)), rel=1e-6)
    )


def test_false_negative_mask_marks_equal_and_near_equal_answers():
    answers = [
        "No. The user will not buy any fund in the next 30 days.",
        "no. the user will NOT buy any fund in the next 30 days",
        "Yes. The user will buy funds once in the next 30 days, mainly at FundPlus.",
        "The user will open FundPlus.",
    ]
    mask = false_negative_mask(answers, threshold=0.9)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 0] = True
    assert np.array_equal(mask, expected)
