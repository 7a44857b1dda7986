"""Kafka CDC ingestion into bronze: Debezium envelopes and market ticks, exactly once, nothing lost.

`consumer.CdcConsumer` drains or follows topics; `decode` turns records into bronze rows, dead letters and
schema changes; `delta` commits rows together with their Kafka offsets; `queries` reads dead letters and
schema changes back; `fetch` is the child process of a parallel drain; `cli` is `optibid ingest cdc`.
No Dagster here (its Dagster assets, checks, sensors and schedule are `assets/bronze/cdc.py`).

The public names are imported lazily: a drain's fetch processes import `ingestion.cdc.fetch` and must not
pay for the Arrow/Delta/pandas stack they never use (seconds of start-up on a loaded machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CdcConsumer": "ingestion.cdc.consumer",
    "IngestStats": "ingestion.cdc.consumer",
    "OffsetResetError": "ingestion.cdc.consumer",
    "PartitionLag": "ingestion.cdc.consumer",
    "lag_by_topic": "ingestion.cdc.consumer",
    "total_lag": "ingestion.cdc.consumer",
    "dead_letters": "ingestion.cdc.queries",
    "schema_changes": "ingestion.cdc.queries",
    "default_topics": "ingestion.cdc.topics",
    "route_for": "ingestion.cdc.topics",
}

if TYPE_CHECKING:
    from ingestion.cdc.consumer import CdcConsumer as CdcConsumer
    from ingestion.cdc.consumer import IngestStats as IngestStats
    from ingestion.cdc.consumer import OffsetResetError as OffsetResetError
    from ingestion.cdc.consumer import PartitionLag as PartitionLag
    from ingestion.cdc.consumer import lag_by_topic as lag_by_topic
    from ingestion.cdc.consumer import total_lag as total_lag
    from ingestion.cdc.queries import dead_letters as dead_letters
    from ingestion.cdc.queries import schema_changes as schema_changes
    from ingestion.cdc.topics import default_topics as default_topics
    from ingestion.cdc.topics import route_for as route_for


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingestion.cdc' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
