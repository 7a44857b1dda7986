"""Read side of CDC ingestion: dead letters and schema-change events as DataFrames (for the API and UI)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from infra.lake import Lake
from ingestion.cdc.decode import DEAD_LETTER_SCHEMA, SCHEMA_CHANGE_SCHEMA, TS_TYPE
from ingestion.cdc.topics import BRONZE_LAYER, DEAD_LETTERS_TABLE, SCHEMA_CHANGES_TABLE


def dead_letters(lake: Lake, since: datetime | None = None, topic: str | None = None) -> pd.DataFrame:
    """Dead-lettered Kafka records (newest first), optionally only those ingested at or after `since`.

    Columns: target_table, reason_code, reason, key_b64, value_b64 (the raw bytes, base64), `_topic`,
    `_partition`, `_offset`, `_offset_epoch`, `_kafka_timestamp`, `_ingested_at`, `_batch_id`.
    """
    return _read(lake, DEAD_LETTERS_TABLE, DEAD_LETTER_SCHEMA.empty_table().to_pandas(), since, topic)


def schema_changes(lake: Lake, since: datetime | None = None, topic: str | None = None) -> pd.DataFrame:
    """Schema-change events (columns added, type conflicts) recorded while ingesting, newest first."""
    return _read(lake, SCHEMA_CHANGES_TABLE, SCHEMA_CHANGE_SCHEMA.empty_table().to_pandas(), since, topic)


def _read(lake: Lake, name: str, empty: pd.DataFrame, since: datetime | None, topic: str | None) -> pd.DataFrame:
    table = lake.table(BRONZE_LAYER, name)
    if table is None:
        return empty
    data = table.to_pyarrow_table()
    if since is not None:
        if since.tzinfo is None:
            raise ValueError("`since` must be timezone-aware (UTC)")
        data = data.filter(pc.greater_equal(data["_ingested_at"], pa.scalar(since, type=TS_TYPE)))
    if topic is not None:
        data = data.filter(pc.equal(data["_topic"], topic))
    data = data.sort_by([("_ingested_at", "descending"), ("_topic", "ascending"), ("_offset", "ascending")])
    return data.to_pandas()
