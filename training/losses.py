"""The two InstructUE losses: InfoNCE with false-negative masking, and answer-token cross-entropy."""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

_WORD = re.compile(r"\w+")


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def false_negative_mask(answers: list[str], *, threshold: float = 0.9) -> np.ndarray:
    """(B, B) bool: True where i != j and answer j equals or nearly equals answer i.

    "Nearly equal" is word-set Jaccard similarity >= `threshold` (case and punctuation ignored). Such pairs
    are not negatives: two users who will both "not buy a fund" must not be pushed apart.
    """
    words = [_words(a) for a in answers]
    size = len(answers)
    mask = np.zeros((size, size), dtype=bool)
    for i in range(size):
        for j in range(i + 1, size):
            union = words[i] | words[j]
            jaccard = len(words[i] & words[j]) / len(union) if union else 1.0
            if jaccard >= threshold:
                mask[i, j] = mask[j, i] = True
    return mask


def info_nce(
    user: torch.Tensor,
    answer: torch.Tensor,
    *,
    temperature: float,
    false_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalized user (B, E) and answer (B, E) embeddings.

    Row i's positive is column i; the other columns are in-batch negatives, except those marked in
    `false_negatives` (B, B), which are removed from both directions' softmax.
    """
    logits = user @ answer.T / temperature  # (B, B)
    if false_negatives is not None:
        off_diagonal = false_negatives & ~torch.eye(len(user), dtype=torch.bool, device=user.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    targets = torch.arange(len(user), device=user.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def answer_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens; (N, V) logits and (N,) targets."""
    return F.cross_entropy(logits.float(), targets)
