"""The schema as Feast objects: the fields and batch sources of the six views, and the snapshot layout.

`feast_repo/features.py` declares the entity and the six views and takes their fields and sources from here,
so no column list is written by hand. The snapshot-table layout (`snapshot_path`, `snapshot_arrow_schema`)
lives here too, so the generator, the `snapshots` command and the tests write exactly what the views read:

    DIR/snapshots/<source>.parquet: user_id int64, event_timestamp timestamp[us, UTC], then
        sequence sources: <source>_<field> list<string> (text fields) or list<float32> (numeric fields),
        <source>_ts list<int64> (unix seconds); newest item last, empty lists when there are no items;
        profile: profile_<field> int64 / float32 / string scalars (nulls allowed).

Feast is imported inside the functions: `import feast` loads torch (feast 0.67's `feast/torch_wrapper.py`
imports it eagerly when it is installed), and importing the plugin must stay cheap.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from instructue_plugin import schema
from instructue_plugin.errors import ConfigError

if TYPE_CHECKING:
    from feast import Field, FileSource

SNAPSHOTS_FOLDER = "snapshots"
# No expiry (Feast reads a zero TTL so): a snapshot row is the user's whole state as of its time and is written
# only when something changed, so the newest row at or before a time is current however old it is. Online reads,
# point-in-time joins and the training reads (`training.data.features_asof`) then all see the same row.
FEATURE_TTL = timedelta(0)

_PROFILE_ARROW_TYPES = {"int": pa.int64(), "float": pa.float32(), "string": pa.string()}


def snapshot_path(data_dir: Path, source_name: str) -> Path:
    """The snapshot table of one source, `DIR/snapshots/<source>.parquet`.

    Raises:
        ConfigError: `source_name` is not one of the six sources.
    """
    _check_source_name(source_name)
    return Path(data_dir) / SNAPSHOTS_FOLDER / f"{source_name}.parquet"


def snapshot_arrow_schema(source_name: str) -> pa.Schema:
    """The Arrow schema of one source's snapshot table, in column order.

    Raises:
        ConfigError: `source_name` is not one of the six sources.
    """
    _check_source_name(source_name)
    columns = [
        pa.field(schema.ENTITY_KEY, pa.int64(), nullable=False),
        pa.field(schema.TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    if source_name == schema.PROFILE.name:
        for field in schema.PROFILE.fields:
            columns.append(pa.field(schema.PROFILE.column(field.name), _PROFILE_ARROW_TYPES[field.dtype]))
    else:
        source = schema.SEQUENCE_BY_NAME[source_name]
        for field in source.fields:
            item_type = pa.string() if field.role == "text" else pa.float32()
            columns.append(pa.field(source.column(field.name), pa.list_(item_type)))
        columns.append(pa.field(source.ts_column, pa.list_(pa.int64())))
    return pa.schema(columns)


def sequence_fields(source: schema.SequenceSource) -> list[Field]:
    """Feast fields of a sequence view: one list per item field, then the items' times."""
    from feast import Field
    from feast.types import Array, Float32, Int64, String

    fields = [
        Field(
            name=source.column(f.name),
            dtype=Array(String) if f.role == "text" else Array(Float32),
            description=f"{f.description} One value per item, newest last.",
        )
        for f in source.fields
    ]
    fields.append(
        Field(
            name=source.ts_column,
            dtype=Array(Int64),
            description="Item times in unix seconds, newest last.",
        )
    )
    return fields


def profile_fields(profile: schema.TabularSource) -> list[Field]:
    """Feast fields of the profile view: one scalar per profile field."""
    from feast import Field
    from feast.types import Float32, Int64, String

    dtypes = {"int": Int64, "float": Float32, "string": String}
    return [
        Field(name=profile.column(f.name), dtype=dtypes[f.dtype], description=f.description) for f in profile.fields
    ]


def snapshot_source(source_name: str, *, data_dir: Path) -> FileSource:
    """The Feast batch source over one snapshot table (an absolute path, fixed when the repo is applied).

    Raises:
        ConfigError: `source_name` is not one of the six sources.
    """
    from feast import FileSource

    path = snapshot_path(Path(data_dir).resolve(), source_name)
    description = (
        schema.PROFILE.description
        if source_name == schema.PROFILE.name
        else schema.SEQUENCE_BY_NAME[source_name].description
    )
    return FileSource(
        name=f"{source_name}_snapshots",
        path=str(path),
        timestamp_field=schema.TIMESTAMP_COLUMN,
        description=f"Snapshot table of `{source_name}`. {description}",
    )


def _check_source_name(source_name: str) -> None:
    if source_name not in schema.SOURCE_NAMES:
        raise ConfigError(
            f"Unknown source {source_name!r}; the schema defines {', '.join(schema.SOURCE_NAMES)}. "
            "Fix the name or add the source to instructue_plugin/schema.py."
        )
