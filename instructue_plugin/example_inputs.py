"""Example inputs of the user-embedding graph: Feast-shaped rows, random well-formed arrays, real arrays.

Used to trace the export, to check onnxruntime against PyTorch (`onnx_export`), and by the benchmarks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .featurize import featurize
from .schema import PROFILE, SEQUENCE_SOURCES

_WORDS = ("SkyWings", "FoodNow", "FundPlus", "MetroGo", "ShopMax", "CityCab", "BookNook", "GameHub", "TripMate")
_CATEGORIES = ("travel", "food", "wealth", "transport", "shopping", "education", "gaming", "insurance")


def example_feature_rows(
    n: int,
    *,
    seed: int = 0,
    item_texts: list[str] | None = None,
    missing: dict[int, list[str]] | None = None,
    max_items: int = 32,
    catalog_size: int = 300,
) -> dict[str, list]:
    """`n` users shaped like a Feast read (dict of lists with every feature column of the six views).

    Items are whole identities drawn from a per-source catalog with a long-tailed popularity (a few merchants
    are everywhere, most are rare), as in real data: `item_texts` (e.g. a model's catalog) where a text splits
    into the source's text fields, else `catalog_size` made-up identities. Numbers are drawn like amounts and
    durations; each row has 1 to `max_items` items per source.

    Args:
        n: number of rows.
        seed: random seed (rows are deterministic).
        item_texts: catalog texts to draw item identities from.
        missing: row -> sources that are null for it (as Feast returns for absent data).
        max_items: most items per source and row (the snapshot tables keep up to 32).
        catalog_size: identities per source when `item_texts` has none for it.

    Returns:
        Columns by name, one list entry per row.
    """
    from .schema import ITEM_TEXT_SEPARATOR

    rng = np.random.default_rng(seed)
    missing = missing or {}
    by_parts: dict[int, list[list[str]]] = {}
    for text in item_texts or []:
        parts = text.split(ITEM_TEXT_SEPARATOR)
        by_parts.setdefault(len(parts), []).append(parts)
    columns: dict[str, list] = {}
    for source in SEQUENCE_SOURCES:
        text_fields = source.text_fields
        catalog = by_parts.get(len(text_fields)) or [
            [
                _CATEGORIES[i % len(_CATEGORIES)]
                if field.name == "category"
                else f"{_WORDS[i % len(_WORDS)]} {field.name} {i // len(_WORDS)}"
                for field in text_fields
            ]
            for i in range(catalog_size)
        ]
        popularity = 1.0 / np.arange(1, len(catalog) + 1) ** 0.8
        popularity /= popularity.sum()
        for column in source.feature_columns:
            columns[column] = []
        for row in range(n):
            count = int(rng.integers(1, max_items + 1))
            absent = source.name in missing.get(row, [])
            ts = np.sort(1_700_000_000 + rng.integers(0, 180 * 86400, size=count)).tolist()
            columns[source.ts_column].append(None if absent else ts)
            picks = rng.choice(len(catalog), size=count, p=popularity)
            for position, field in enumerate(text_fields):
                values = [catalog[int(p)][position] for p in picks]
                columns[source.column(field.name)].append(None if absent else values)
            for field in source.numeric_fields:
                values = rng.gamma(2.0, 30.0, size=count).astype(np.float32).tolist()
                columns[source.column(field.name)].append(None if absent else values)
    for field in PROFILE.fields:
        if field.kind == "categorical":
            values = [field.categories[int(i) % len(field.categories)] for i in rng.integers(0, 20, size=n)]
        else:
            values = rng.integers(1, 60, size=n).tolist()
        columns[PROFILE.column(field.name)] = [
            None if "profile" in missing.get(r, []) else v for r, v in enumerate(values)
        ]
    return columns


def random_graph_inputs(model: Any, *, batch: int, length: int, items: int, seed: int) -> dict[str, np.ndarray]:
    """Random but well-formed inputs of the user graph: (batch, length) right-padded rows over `items` vectors."""
    from .schema import ITEM_NUMERIC_WIDTH
    from .sequence import PROFILE_KIND

    rng = np.random.default_rng(seed)
    vocab = model.llm_tokenizer.get_vocab_size(with_added_tokens=True)
    lengths = rng.integers(max(2, length // 2), length + 1, size=batch)
    lengths[0] = length  # the longest row sets the padded length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    vectors = rng.standard_normal((items, model.item_cache.dim)).astype(np.float32)
    return {
        "input_ids": rng.integers(0, vocab, size=(batch, length)).astype(np.int64),
        "token_kind": rng.integers(0, PROFILE_KIND + 1, size=(batch, length)).astype(np.int64),
        "item_vectors": vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        "item_index": rng.integers(0, items, size=(batch, length)).astype(np.int64),
        "item_numeric": rng.standard_normal((batch, length, ITEM_NUMERIC_WIDTH)).astype(np.float32),
        "profile_vector": rng.standard_normal((batch, PROFILE.vector_width)).astype(np.float32),
        "profile_slot": rng.integers(0, model.config.profile_tokens, size=(batch, length)).astype(np.int64),
        "attention_mask": mask,
        "position_ids": np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64),
        "user_position": (lengths - 1).astype(np.int64),
    }


def real_graph_inputs(model: Any, features: Any, instructions: list[str]) -> dict[str, np.ndarray]:
    """Inputs of the user graph for feature rows, built exactly as the embedders build them."""
    users = featurize(features, max_items_per_source=model.config.max_items_per_source)
    inputs = model.builder.build(users, instructions)
    return inputs.graph_inputs(model.item_vectors(inputs.item_texts))


def item_inputs(model: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """Inputs of the item encoder for texts, tokenized (truncated, padded) as the embedders do."""
    encoded = model.item_tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
