"""Bronze CDC assets: Kafka (Debezium trading tables, market ticks) drained into bronze Delta tables.

One multi-asset drains every selected topic to the high-water mark it sees at run start (the library
`ingestion.cdc` does the work and keeps offsets in the Delta commits). The lag sensor and the floor
schedule that start it live in `orchestration/`. A blocking check on the dead-letter asset warns on any
dead letter and fails above `OPTIBID_CDC_DEAD_LETTER_MAX_RATE`.
"""


from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg

from infra.settings import get_settings
from ingestion.cdc import CdcConsumer, IngestStats, PartitionLag, dead_letters, default_topics, route_for
from ingestion.cdc.ownership import follow_mode_active
from ingestion.cdc.topics import CDC_TOPIC_PREFIX, DEAD_LETTERS_TABLE, SCHEMA_CHANGES_TABLE, TICKS_TOPIC
from orchestration.resources import BrokerResource, LakeResource, WarehouseResource

CDC_TOPICS = default_topics()
TOPIC_KEYS: dict[str, dg.AssetKey] = {t: dg.AssetKey(["bronze", route_for(t).table]) for t in CDC_TOPICS}
DEAD_LETTERS_KEY = dg.AssetKey(["bronze", DEAD_LETTERS_TABLE])
SCHEMA_CHANGES_KEY = dg.AssetKey(["bronze", SCHEMA_CHANGES_TABLE])
ALL_KEYS = [*TOPIC_KEYS.values(), DEAD_LETTERS_KEY, SCHEMA_CHANGES_KEY]


class CdcTopicsConfig(dg.Config):
    """Where the topics are: Debezium's `topic.prefix` (`<server>.<schema>`) and the tick topic."""

    topic_prefix: str = CDC_TOPIC_PREFIX
    ticks_topic: str = TICKS_TOPIC

    def topic_keys(self) -> dict[str, dg.AssetKey]:
        topics = default_topics(self.topic_prefix, self.ticks_topic)
        return {t: dg.AssetKey(["bronze", route_for(t).table]) for t in topics}


def _spec(key: dg.AssetKey, description: str, skippable: bool = False) -> dg.AssetSpec:
    return dg.AssetSpec(
        key, group_name="bronze", kinds={"kafka", "delta"}, description=description, skippable=skippable
    )


@dg.multi_asset(
    name="bronze_cdc",
    specs=[
        # Skippable: a drain that read nothing from a topic records an observation, not a materialization,
        # so the floor schedule's empty drains start no silver rebuild.
        *(_spec(key, f"Kafka topic `{topic}`, append-only, offsets committed with the rows.", skippable=True)
          for topic, key in TOPIC_KEYS.items()),
        _spec(DEAD_LETTERS_KEY, "Kafka records that could not be ingested, with raw bytes and a reason."),
        _spec(SCHEMA_CHANGES_KEY, "Columns added to and type conflicts seen in bronze CDC tables."),
    ],
    can_subset=True,
)
def bronze_cdc(
    context: dg.AssetExecutionContext,
    config: CdcTopicsConfig,
    broker: BrokerResource,
    lake: LakeResource,
    warehouse: WarehouseResource,
):
    """Drain each selected topic's partitions up to their high-water marks at run start, unless a follow-mode
    consumer owns the topics (then it has written them already, and a drain beside it would only fail)."""
    selected = context.selected_asset_keys
    topic_keys = config.topic_keys()
    topics = [topic for topic, key in topic_keys.items() if key in selected]
    stats = IngestStats()
    if topics and follow_mode_active(warehouse.url, lake.lake.root):
        context.log.info("a follow-mode consumer owns the CDC topics of this lake: nothing to drain")
        topics_to_drain: list[str] = []
    else:
        topics_to_drain = topics
    if topics_to_drain:
        with CdcConsumer(lake.lake, broker.client_config(), topics_to_drain, log=context.log) as consumer:
            stats = consumer.drain()
    lag_before, lag_after = lag_by_topic(stats.lag_before), lag_by_topic(stats.lag_after)
    for topic in topics:
        table = route_for(topic).table
        ts = stats.tables.get(table)
        read = ts.events_read if ts else 0
        metadata = {
            "topic": topic,
            "events_read": read,
            "rows_written": ts.rows_written if ts else 0,
            "dead_lettered": ts.dead_lettered if ts else 0,
            "new_columns": ", ".join(ts.new_columns) if ts and ts.new_columns else "",
            "lag_before": lag_before.get(topic, 0),
            "lag_after": lag_after.get(topic, 0),
            "events_per_second": dg.MetadataValue.float(round(read / stats.seconds, 1) if stats.seconds else 0.0),
            "seconds": dg.MetadataValue.float(round(stats.seconds, 3)),
            "warnings": "\n".join(w for w in stats.warnings if w.startswith(topic)),
        }
        if ts and ts.rows_written:
            yield dg.MaterializeResult(asset_key=topic_keys[topic], metadata=metadata)
        else:
            context.log_event(dg.AssetObservation(asset_key=topic_keys[topic], metadata=metadata))
    if DEAD_LETTERS_KEY in selected:
        yield dg.MaterializeResult(
            asset_key=DEAD_LETTERS_KEY,
            metadata={
                "events_read": stats.events_read,
                "dead_lettered": stats.dead_lettered,
                "dead_letter_rate": dg.MetadataValue.float(
                    stats.dead_lettered / stats.events_read if stats.events_read else 0.0
                ),
            },
        )
    if SCHEMA_CHANGES_KEY in selected:
        changes = sum(t.schema_changes for t in stats.tables.values())
        yield dg.MaterializeResult(asset_key=SCHEMA_CHANGES_KEY, metadata={"schema_changes": changes})


@dg.asset_check(asset=DEAD_LETTERS_KEY, blocking=True, description="Dead letters of the latest CDC run.")
def cdc_dead_letter_rate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """WARN when the latest run dead-lettered anything; ERROR when its rate exceeds the configured maximum."""
    max_rate = get_settings().cdc_dead_letter_max_rate
    event = context.instance.get_latest_materialization_event(DEAD_LETTERS_KEY)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    read = int(meta["events_read"].value) if "events_read" in meta else 0
    dead = int(meta["dead_lettered"].value) if "dead_lettered" in meta else 0
    rate = dead / read if read else 0.0
    recent = dead_letters(lake.lake, since=datetime.now(UTC) - timedelta(hours=24))
    reasons = recent["reason_code"].value_counts().to_dict() if not recent.empty else {}
    metadata = {
        "events_read": read,
        "dead_lettered": dead,
        "dead_letter_rate": dg.MetadataValue.float(rate),
        "max_rate": dg.MetadataValue.float(max_rate),
        "dead_letters_last_24h": len(recent),
        "reasons_last_24h": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
    }
    if rate > max_rate:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"{dead} of {read} events dead-lettered ({rate:.2%} > {max_rate:.2%})")
    return dg.AssetCheckResult(passed=dead == 0, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                               description=f"{dead} of {read} events dead-lettered")


def lag_by_topic(lags: list[PartitionLag]) -> dict[str, int]:
    """Total lag per topic from per-partition lags."""
    out: dict[str, int] = defaultdict(int)
    for p in lags:
        out[p.topic] += p.lag
    return dict(out)
