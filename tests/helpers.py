"""Shared test helpers: feature rows shaped like a Feast read, and a tiny model built in code."""

from __future__ import annotations

import numpy as np

from instructue_plugin.schema import PROFILE, SEQUENCE_SOURCES

WORDS = ["SkyWings", "FoodNow", "FundPlus", "MetroGo", "ShopMax", "CityCab", "BookNook", "GameHub"]
CATEGORIES = ["travel", "food", "wealth", "transport", "shopping", "education", "gaming", "insurance"]


def feature_rows(n: int, *, seed: int = 0, missing: dict[int, list[str]] | None = None) -> dict[str, list]:
    """`n` random users as a dict of lists with every feature column of the six views.

    `missing` maps a row to the sources that are null for it (as Feast returns for absent data).
    """
    rng = np.random.default_rng(seed)
    missing = missing or {}
    columns: dict[str, list] = {}
    for source in SEQUENCE_SOURCES:
        for column in source.feature_columns:
            columns[column] = []
        for row in range(n):
            count = int(rng.integers(1, source.max_items + 1))
            absent = source.name in missing.get(row, [])
            ts = np.sort(1_700_000_000 + rng.integers(0, 180 * 86400, size=count)).tolist()
            columns[source.ts_column].append(None if absent else ts)
            for field in source.fields:
                if field.role == "numeric":
                    values = rng.gamma(2.0, 30.0, size=count).astype(np.float32).tolist()
                else:
                    values = [
                        f"{WORDS[i % len(WORDS)]} {field.name}"
                        if field.name != "category"
                        else CATEGORIES[i % len(CATEGORIES)]
                        for i in rng.integers(0, 40, size=count)
                    ]
                columns[source.column(field.name)].append(None if absent else values)
    for field in PROFILE.fields:
        column = PROFILE.column(field.name)
        if field.kind == "categorical":
            values = [field.categories[int(i) % len(field.categories)] for i in rng.integers(0, 20, size=n)]
        else:
            values = rng.integers(1, 60, size=n).tolist()
        columns[column] = [None if "profile" in missing.get(r, []) else v for r, v in enumerate(values)]
    return columns


def select_rows(columns: dict[str, list], rows: list[int]) -> dict[str, list]:
    """The given rows of a dict of lists."""
    return {name: [values[r] for r in rows] for name, values in columns.items()}
