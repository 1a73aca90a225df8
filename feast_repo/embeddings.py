"""InstructUE embedding views: computed on read, or materialized for named instructions.

Declarations only; the work is in `instructue_plugin.feast_udf` (on read) and `instructue_plugin.materialize`
(materialized). The model is read from `INSTRUCTUE_MODEL` on the first embedding, never at `feast apply`.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, String
from features import BEHAVIOUR_VIEWS, user

# Derived files of this repo (git-ignored): the materialized embeddings' offline copy and the resume state.
REPO_DATA_DIR = Path(__file__).resolve().parent / "data"

# ---- On read: any instruction, computed at every read. ----

# The instruction, sent with each entity row: {"user_id": 42, "instruction": "..."}; "" is the general one.
instruction_request = RequestSource(
    name="instruction_request",
    schema=[
        Field(
            name="instruction",
            dtype=String,
            description="What the embedding is for, in words; an empty string asks for the general embedding. "
            "Text beyond the model's instruction budget is cut (logged).",
        )
    ],
    description="The instruction of an on-read embedding, given with each entity row.",
)


# The user's embedding under the request's instruction, computed from the six views at read time.
@on_demand_feature_view(
    sources=[*BEHAVIOUR_VIEWS, instruction_request],
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            description="L2-normalized InstructUE embedding; null for a user with no data.",
        )
    ],
    mode="python",
    description="InstructUE user embedding for the request's instruction, computed on read.",
)
def user_embedding(inputs: dict) -> dict:
    import instructue_plugin.feast_udf

    return instructue_plugin.feast_udf.embed_on_read(inputs)


# ---- Materialized: named instructions (instructions.yaml), written by `instructue materialize`. ----

# A named instruction of `instructions.yaml` (fund, churn, travel, general, ...).
named_instruction = Entity(
    name="named_instruction",
    join_keys=["instruction_id"],
    value_type=ValueType.STRING,
    description="A named instruction of feast_repo/instructions.yaml, by its id.",
)

# Offline copy of the materialized embeddings, written by `instructue materialize` beside the online rows: one
# folder per instruction id, one parquet file per batch. It exists only after the first `instructue materialize`
# (until then, `feast materialize` needs `--views` naming the six behaviour views; see README.md).
embeddings_source = FileSource(
    name="user_embedding_materialized_source",
    path=str(REPO_DATA_DIR / "user_embedding_materialized" / "*" / "*.parquet"),
    timestamp_field="event_timestamp",
    description="Materialized embeddings: user_id, instruction_id, embedding, event_timestamp (compute time).",
)

# Each user's embedding under each named instruction, precomputed: a read is a key lookup.
user_embedding_materialized = FeatureView(
    name="user_embedding_materialized",
    entities=[user, named_instruction],
    ttl=timedelta(0),  # no expiry: an embedding stays valid until `instructue materialize` replaces it
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            description="L2-normalized InstructUE embedding under the named instruction.",
        )
    ],
    source=embeddings_source,
    online=True,
    description="InstructUE user embeddings for the named instructions, written by `instructue materialize`.",
)
