"""Baseline user representations, each a function of the same Feast feature rows the model reads.

- `profile_lr`: the normalized profile vector alone;
- `bag_of_items`: TF-IDF over every item of every source (an item is its source plus its text);
- `mean_item`: the mean item-encoder vector per source, concatenated;
- `zero_shot_llm`: the untrained backbone reading a text serialization of the user (mean-pooled last layer),
  its profile first and as many of each source's newest items as the token budget holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from instructue_plugin.featurize import UserBehaviour, featurize
from instructue_plugin.schema import PROFILE, SEQUENCE_SOURCES

# Items per source the text baselines read: the snapshot's full list (the model keeps only its newest few).
BASELINE_MAX_ITEMS = 64


def behaviours(features: pd.DataFrame) -> list[UserBehaviour]:
    """Featurize rows keeping every stored item (baselines are not bound by the model's token budget)."""
    return featurize(features, max_items_per_source=BASELINE_MAX_ITEMS)


def profile_matrix(users: list[UserBehaviour]) -> np.ndarray:
    """(n, P) profile vectors; users without a profile get zeros."""
    out = np.zeros((len(users), PROFILE.vector_width), dtype=np.float32)
    for i, user in enumerate(users):
        if user.profile is not None:
            out[i] = user.profile
    return out


def _item_tokens(user: UserBehaviour) -> list[str]:
    return [f"{name}:{text}" for name, items in user.sources.items() for text in items.texts]


def bag_of_items_matrix(users: list[UserBehaviour]) -> sparse.csr_matrix:
    """(n, vocabulary) TF-IDF of item tokens (sublinear term frequency, items seen by >= 2 users).

    Fitted on all the evaluation users' items, test folds included (no labels): unsupervised, like every
    method's embedding of all of them before the probes run.
    """
    vectorizer = TfidfVectorizer(analyzer=_item_tokens, min_df=2, sublinear_tf=True)
    return vectorizer.fit_transform(users).tocsr()


def mean_item_matrix(users: list[UserBehaviour], item_vectors: Any) -> np.ndarray:
    """(n, sources * D + sources) mean item vector per source plus log item counts.

    Args:
        item_vectors: callable mapping a list of item texts to their (N, D) vectors (e.g. an embedder's).
    """
    texts = sorted({t for u in users for items in u.sources.values() for t in items.texts})
    table = item_vectors(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    row_of = {t: i for i, t in enumerate(texts)}
    dim = table.shape[1]
    out = np.zeros((len(users), len(SEQUENCE_SOURCES) * (dim + 1)), dtype=np.float32)
    for i, user in enumerate(users):
        for k, source in enumerate(SEQUENCE_SOURCES):
            items = user.sources.get(source.name)
            if items is None:
                continue
            offset = k * (dim + 1)
            out[i, offset : offset + dim] = table[[row_of[t] for t in items.texts]].mean(0)
            out[i, offset + dim] = np.log1p(len(items.texts))
    return out


def serialize_user(user: UserBehaviour, row: pd.Series, *, max_items: int) -> str:
    """A plain-text description of a user's profile and newest items, for the zero-shot LLM baseline."""
    facts = [
        f"{f.name} {row.get(PROFILE.column(f.name))}"
        for f in PROFILE.fields
        if row.get(PROFILE.column(f.name)) is not None and not pd.isna(row.get(PROFILE.column(f.name)))
    ]
    parts = ["profile: " + ", ".join(facts)] if facts else []
    for source in SEQUENCE_SOURCES:
        items = user.sources.get(source.name)
        if items is not None:
            parts.append(f"{source.name}: " + "; ".join(items.texts[-max_items:]))
    return "\n".join(parts) or "no data"


def fitted_serialization(
    user: UserBehaviour, row: pd.Series, *, tokenizer: Any, max_items: int, max_tokens: int
) -> list[int]:
    """Token ids of `serialize_user` within `max_tokens`: fewer (newest) items per source until the text fits.

    Every source and the profile keep their place; only a user whose one newest item per source is still too
    long is cut at the end.
    """
    for items in range(max_items, 0, -1):
        ids = tokenizer.encode(serialize_user(user, row, max_items=items)).ids
        if len(ids) <= max_tokens:
            return ids
    return ids[:max_tokens]


def zero_shot_llm_matrix(
    features: pd.DataFrame,
    users: list[UserBehaviour],
    *,
    llm: Any,
    tokenizer: Any,
    max_items: int,
    max_tokens: int = 512,
    batch_size: int = 16,
) -> np.ndarray:
    """(n, H) mean-pooled last hidden states of the untrained backbone over each user's serialization."""
    import torch

    tokenizer.no_truncation()
    encoded_users = [
        fitted_serialization(u, features.iloc[i], tokenizer=tokenizer, max_items=max_items, max_tokens=max_tokens)
        for i, u in enumerate(users)
    ]
    decoder = llm.get_decoder()
    out = []
    order = np.argsort([len(e) for e in encoded_users])
    with torch.inference_mode():
        for start in range(0, len(encoded_users), batch_size):
            rows = order[start : start + batch_size]
            encoded = [encoded_users[r] for r in rows]
            length = max(len(e) for e in encoded)
            ids = torch.zeros((len(rows), length), dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for j, e in enumerate(encoded):
                ids[j, : len(e)] = torch.tensor(e)
                mask[j, : len(e)] = 1
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            out.append((rows, pooled.float().numpy()))
    matrix = np.zeros((len(encoded_users), out[0][1].shape[1]), dtype=np.float32)
    for rows, values in out:
        matrix[rows] = values
    return matrix
