"""InstructUE feature repository: the user entity and one feature view per behaviour source.

Declarations only. Fields and batch sources come from `instructue_plugin.schema` through
`instructue_plugin.feast_definitions`, so a column is never listed twice. The views are named exactly as the
sources and every feature name is unique across them (`bill_merchant`, `app_minutes`, `profile_age`, ...), so
one read of all six views without full feature names has no collisions.

The data folder is read from `INSTRUCTUE_DATA` (see `instructue_plugin.settings`) when `feast apply` imports
this file; the registry stores the resulting absolute paths, so re-apply after moving the data.
"""

from feast import Entity, FeatureView, ValueType

from instructue_plugin import schema, settings
from instructue_plugin.feast_definitions import (
    FEATURE_TTL,
    profile_fields,
    sequence_fields,
    snapshot_source,
)

# The folder holding `snapshots/<source>.parquet`, fixed at apply time.
DATA_DIR = settings.data_dir()
SEQUENCE = schema.SEQUENCE_BY_NAME

# The user whose behaviour every view describes.
user = Entity(
    name=schema.ENTITY_NAME,
    join_keys=[schema.ENTITY_KEY],
    value_type=ValueType.INT64,
    description="A user of the app, identified by a 64-bit integer id.",
)

# ---- Sequence views: the last N items per snapshot row, one list column per item field, newest last. ----

# Payment transactions.
bill = FeatureView(
    name="bill",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=sequence_fields(SEQUENCE["bill"]),
    source=snapshot_source("bill", data_dir=DATA_DIR),
    description=SEQUENCE["bill"].description,
)

# Mini-program interactions.
miniprogram = FeatureView(
    name="miniprogram",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=sequence_fields(SEQUENCE["miniprogram"]),
    source=snapshot_source("miniprogram", data_dir=DATA_DIR),
    description=SEQUENCE["miniprogram"].description,
)

# Page-navigation paths.
page_path = FeatureView(
    name="page_path",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=sequence_fields(SEQUENCE["page_path"]),
    source=snapshot_source("page_path", data_dir=DATA_DIR),
    description=SEQUENCE["page_path"].description,
)

# App-usage sessions.
app = FeatureView(
    name="app",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=sequence_fields(SEQUENCE["app"]),
    source=snapshot_source("app", data_dir=DATA_DIR),
    description=SEQUENCE["app"].description,
)

# Search queries.
search = FeatureView(
    name="search",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=sequence_fields(SEQUENCE["search"]),
    source=snapshot_source("search", data_dir=DATA_DIR),
    description=SEQUENCE["search"].description,
)

# ---- Tabular view: one row of scalars per snapshot. ----

# Profile: demographics and account facts.
profile = FeatureView(
    name="profile",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=profile_fields(schema.PROFILE),
    source=snapshot_source("profile", data_dir=DATA_DIR),
    description=schema.PROFILE.description,
)

# The six views above, in schema order: the sources of the on-demand embedding views.
BEHAVIOUR_VIEWS = [bill, miniprogram, page_path, app, search, profile]

# ---- The embedding views (user_embedding, user_embedding_materialized) are declared in embeddings.py. ----
