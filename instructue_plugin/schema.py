"""The six user-behaviour sources, defined once.

This module drives everything that touches user data: the synthetic generator, the raw event-log format,
the snapshot tables that Feast reads, the Feast feature views, featurization, training and export.
`SCHEMA_HASH` identifies the definitions; models and exports record it and refuse to run on another one.

Two kinds of source:
- a *sequence* source (bill, miniprogram, page_path, app, search): each item has text fields, which form the
  item's text (its identity, encoded once per distinct text), and numeric fields, which go to the adapter
  beside the item vector together with the item's recency;
- the *tabular* source (profile): one row of numeric and categorical fields per user.

Column naming: raw event logs use the bare field names (`merchant`, `amount`); snapshot tables and Feast use
`<source>_<field>` list columns (`bill_merchant`, newest item last) plus `<source>_ts` (item times, unix
seconds), so that every feature name is unique across the six views.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

ENTITY_NAME = "user"
ENTITY_KEY = "user_id"
TIMESTAMP_COLUMN = "event_timestamp"
ITEM_TEXT_SEPARATOR = " · "
# Recency is measured in days before the user's newest item and squashed with log1p / RECENCY_SCALE.
RECENCY_SCALE = math.log1p(180.0)


@dataclass(frozen=True)
class ItemField:
    """One field of a sequence item.

    `role="text"` fields are joined into the item text; `role="numeric"` fields are transformed
    (`log1p` or none), then scaled as `(value - center) / scale`, and fed to the adapter.
    """

    name: str
    role: Literal["text", "numeric"]
    description: str
    transform: Literal["none", "log1p"] = "none"
    center: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class SequenceSource:
    """A source whose rows are events (transactions, visits, sessions, queries)."""

    name: str
    description: str
    fields: tuple[ItemField, ...]
    max_items: int  # items kept per snapshot row, newest last

    @property
    def text_fields(self) -> tuple[ItemField, ...]:
        return tuple(f for f in self.fields if f.role == "text")

    @property
    def numeric_fields(self) -> tuple[ItemField, ...]:
        return tuple(f for f in self.fields if f.role == "numeric")

    def column(self, field_name: str) -> str:
        """Snapshot/Feast column of a field, e.g. `bill_merchant`."""
        return f"{self.name}_{field_name}"

    @property
    def ts_column(self) -> str:
        """Snapshot/Feast column holding the items' times (unix seconds)."""
        return f"{self.name}_ts"

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(self.column(f.name) for f in self.fields) + (self.ts_column,)

    def item_text(self, text_values: tuple[str, ...] | list[str]) -> str:
        """The item's identity as text, e.g. `SkyWings Airlines · travel · app pay`."""
        return ITEM_TEXT_SEPARATOR.join(str(v) for v in text_values)


@dataclass(frozen=True)
class ProfileField:
    """One column of the tabular profile.

    Numeric fields become two inputs (scaled value, missing flag); categorical fields become a one-hot over
    `categories` plus one slot for unknown or missing values.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "string"]
    description: str
    transform: Literal["none", "log1p"] = "none"
    center: float = 0.0
    scale: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 2 if self.kind == "numeric" else len(self.categories) + 1


@dataclass(frozen=True)
class TabularSource:
    """The per-user profile snapshot."""

    name: str
    description: str
    fields: tuple[ProfileField, ...]

    def column(self, field_name: str) -> str:
        return f"{self.name}_{field_name}"

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(self.column(f.name) for f in self.fields)

    @property
    def vector_width(self) -> int:
        """Width of the normalized profile vector handed to the profile adapter."""
        return sum(f.width for f in self.fields)


SEQUENCE_SOURCES: tuple[SequenceSource, ...] = (
    SequenceSource(
        name="bill",
        description="Payment transactions: merchant, category, payment channel and amount.",
        fields=(
            ItemField("merchant", "text", "Merchant name."),
            ItemField("category", "text", "Merchant category."),
            ItemField("channel", "text", "Payment channel (app pay, card, QR code, ...)."),
            ItemField("amount", "numeric", "Amount paid.", transform="log1p", center=4.0, scale=2.0),
        ),
        max_items=32,
    ),
    SequenceSource(
        name="miniprogram",
        description="Mini-program interactions: program, category, action and dwell time.",
        fields=(
            ItemField("program", "text", "Mini-program name."),
            ItemField("category", "text", "Mini-program category."),
            ItemField("action", "text", "What the user did (open, browse, buy, ...)."),
            ItemField("dwell_s", "numeric", "Dwell time in seconds.", transform="log1p", center=3.5, scale=1.5),
        ),
        max_items=32,
    ),
    SequenceSource(
        name="page_path",
        description="Page-navigation paths inside the main app, SPM-like a.b.c.d.",
        fields=(ItemField("path", "text", "Page path, e.g. home.wealth.fund_detail.buy."),),
        max_items=32,
    ),
    SequenceSource(
        name="app",
        description="App-usage sessions: app, category and minutes of use.",
        fields=(
            ItemField("app", "text", "App name."),
            ItemField("category", "text", "App category."),
            ItemField("minutes", "numeric", "Session length in minutes.", transform="log1p", center=2.0, scale=1.0),
        ),
        max_items=32,
    ),
    SequenceSource(
        name="search",
        description="Search queries typed in the main app.",
        fields=(ItemField("query", "text", "The query text."),),
        max_items=32,
    ),
)

PROFILE = TabularSource(
    name="profile",
    description="Per-user profile snapshot: demographics and account facts.",
    fields=(
        ProfileField("age", "numeric", "int", "Age in years.", center=40.0, scale=15.0),
        ProfileField("gender", "categorical", "string", "Gender as declared.", categories=("F", "M")),
        ProfileField(
            "occupation",
            "categorical",
            "string",
            "Occupation.",
            categories=(
                "student",
                "engineer",
                "educator",
                "healthcare",
                "executive",
                "salesman",
                "artist",
                "technician",
                "homemaker",
                "retired",
                "other",
            ),
        ),
        ProfileField("city_tier", "numeric", "int", "City tier, 1 (largest) to 4.", center=2.5, scale=1.0),
        ProfileField(
            "account_age_days",
            "numeric",
            "int",
            "Days since the account was opened.",
            transform="log1p",
            center=6.5,
            scale=1.0,
        ),
        ProfileField("balance_bucket", "numeric", "int", "Balance bucket, 0 (lowest) to 5.", center=2.5, scale=1.5),
    ),
)

SOURCE_NAMES: tuple[str, ...] = tuple(s.name for s in SEQUENCE_SOURCES) + (PROFILE.name,)
SEQUENCE_BY_NAME: dict[str, SequenceSource] = {s.name: s for s in SEQUENCE_SOURCES}
# Numeric inputs per soft token: the widest source's numeric fields (narrower sources pad with zeros), then
# recency, log item count and a summary flag (the last two are non-zero only on a source's summary token).
ITEM_NUMERIC_WIDTH: int = max(len(s.numeric_fields) for s in SEQUENCE_SOURCES) + 3


def feature_columns() -> list[str]:
    """Every feature column of the six sources, in schema order (what one Feast read returns)."""
    columns: list[str] = []
    for source in SEQUENCE_SOURCES:
        columns.extend(source.feature_columns)
    columns.extend(PROFILE.feature_columns)
    return columns


def full_feature_names() -> dict[str, str]:
    """Feast's full column names (`<view>__<feature>`, read with `full_feature_names=True`) -> the short names."""
    names = {f"{s.name}__{c}": c for s in SEQUENCE_SOURCES for c in s.feature_columns}
    return names | {f"{PROFILE.name}__{c}": c for c in PROFILE.feature_columns}


def feature_refs() -> list[str]:
    """Feast feature references `<view>:<feature>` for the six feature views."""
    refs = [f"{s.name}:{c}" for s in SEQUENCE_SOURCES for c in s.feature_columns]
    refs += [f"{PROFILE.name}:{c}" for c in PROFILE.feature_columns]
    return refs


def _schema_hash() -> str:
    payload = {
        "entity_key": ENTITY_KEY,
        "timestamp": TIMESTAMP_COLUMN,
        "separator": ITEM_TEXT_SEPARATOR,
        "recency_scale": RECENCY_SCALE,
        "item_numeric_width": ITEM_NUMERIC_WIDTH,
        "sequences": [asdict(s) for s in SEQUENCE_SOURCES],
        "profile": asdict(PROFILE),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


SCHEMA_HASH: str = _schema_hash()
