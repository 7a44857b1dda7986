"""Bronze CDC: Kafka topics (Debezium trading tables, market ticks) drained into bronze Delta tables, with
the job, schedule and sensors that start the drains and the checks on what they land.

- `bronze_cdc`: one multi-asset drains every selected topic to the high-water mark it sees at run start
  (`ingestion.cdc` does the work and keeps offsets in the Delta commits).
- Checks: `cdc_dead_letter_rate` (blocking) warns on any dead letter and fails above
  `OPTIBID_CDC_DEAD_LETTER_MAX_RATE`; the tables' expectation suites (non-blocking) validate the rows a
  drain appended.
- `bronze_cdc_job`, started by `bronze_cdc_lag_sensor` when Kafka is ahead of bronze and by the
  `bronze_cdc_floor` schedule every 15 minutes.
- `bronze_cdc_commits_sensor` records the follow-mode consumer's commits (made outside Dagster) as
  materializations, so silver follows them.

Decoding, offsets and lag arithmetic belong to `ingestion.cdc`, not here.
"""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.shared.automation import WAREHOUSE_RUN_TAGS
from assets.shared.expectation_checks import (
    DELTA_VERSION,
    PREVIOUS_DELTA_VERSION,
    appended_rows_check,
    delta_version,
)
from assets.shared.resources import BrokerResource, LakeResource, WarehouseResource
from infra.settings import get_settings
from ingestion.cdc import CdcConsumer, IngestStats, dead_letters, default_topics, lag_by_topic, route_for
from ingestion.cdc.ownership import follow_mode_active
from ingestion.cdc.topics import CDC_TOPIC_PREFIX, DEAD_LETTERS_TABLE, SCHEMA_CHANGES_TABLE, TICKS_TOPIC

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
    versions_before = {topic: delta_version(lake, "bronze", route_for(topic).table) for topic in topics_to_drain}
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
            metadata[PREVIOUS_DELTA_VERSION] = versions_before[topic]
            metadata[DELTA_VERSION] = delta_version(lake, "bronze", table)
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


# Expectation suites of the bronze CDC tables, on the rows each drain appended.
cdc_table_checks = [
    appended_rows_check(f"bronze.{route_for(topic).table}") for topic in CDC_TOPICS
]

# --- starting the drains ------------------------------------------------------------------------------

bronze_cdc_job = dg.define_asset_job(
    "bronze_cdc_job",
    selection=dg.AssetSelection.assets(*ALL_KEYS),
    description="Drain every CDC topic into bronze up to the high-water marks seen at run start.",
    tags=WAREHOUSE_RUN_TAGS,  # every drain (lag sensor, commits sensor, floor schedule) goes first in the queue
)

bronze_cdc_floor_schedule = dg.ScheduleDefinition(
    name="bronze_cdc_floor",
    job=bronze_cdc_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Drains CDC topics every 15 minutes even when the lag sensor stays quiet.",
)

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_lag_sensor(
    name: str = "bronze_cdc_lag_sensor", topics_config: CdcTopicsConfig | None = None
) -> dg.SensorDefinition:
    """The lag sensor for one set of topics (the default topics unless `topics_config` says otherwise)."""
    config = topics_config or CdcTopicsConfig()
    topic_keys = config.topic_keys()
    run_config = dg.RunConfig(ops={"bronze_cdc": config})

    @dg.sensor(
        name=name,
        job=bronze_cdc_job,
        minimum_interval_seconds=get_settings().new_data_poll_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, broker: BrokerResource, lake: LakeResource, warehouse: WarehouseResource
    ):
        """Start a CDC run when Kafka is more than `OPTIBID_CDC_LAG_THRESHOLD` events ahead of bronze and no
        follow-mode consumer owns the topics."""
        threshold = get_settings().cdc_lag_threshold
        with CdcConsumer(lake.lake, broker.client_config(), list(topic_keys)) as consumer:
            by_topic = lag_by_topic(consumer.lag())
        total = sum(by_topic.values())
        # Observations put the lag on each bronze asset in the UI, whether or not a run starts.
        observations = [
            dg.AssetObservation(asset_key=key, metadata={"lag": by_topic.get(topic, 0)})
            for topic, key in topic_keys.items()
        ]
        if total <= threshold:
            return dg.SensorResult(asset_events=observations, skip_reason=f"lag {total} <= threshold {threshold}")
        if follow_mode_active(warehouse.url, lake.lake.root):
            return dg.SensorResult(
                asset_events=observations, skip_reason=f"lag {total}: a follow-mode consumer owns the topics"
            )
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=bronze_cdc_job.name, statuses=_IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SensorResult(
                asset_events=observations, skip_reason=f"lag {total}: a CDC run is already in flight"
            )
        request = dg.RunRequest(run_config=run_config, tags={"optibid/cdc_lag": str(total)})
        return dg.SensorResult(run_requests=[request], asset_events=observations)

    return _sensor


bronze_cdc_lag_sensor = build_lag_sensor()

# --- recording follow-mode commits --------------------------------------------------------------------

# When follow-mode commits are recorded (and so when silver rebuilds from them). A burst (a backlog drained,
# a batch of trading changes) is recorded once it has been quiet for QUIET seconds; a table written without
# pause is recorded at most every MAX_WAIT seconds, so a continuous stream does not keep Spark busy for ever
# on two cores. Ticks reach the minute KPIs through the real-time path within seconds; their batch
# reconciliation (silver and gold of the recent days) can wait longer than trading changes.
COMMITS_QUIET_SECONDS = 20
TRADING_MAX_WAIT_SECONDS = 5 * 60
TICKS_MAX_WAIT_SECONDS = 15 * 60


@dataclass
class TableCommits:
    """What the sensor knows of one bronze table: the version recorded last (and when), the version seen
    last (and since when it has not changed)."""

    recorded: int = -1
    recorded_at: float = 0.0
    seen: int = -1
    seen_at: float = 0.0

    def observe(self, version: int, now: float, max_wait: float) -> bool:
        """Take the table's current version; True when it is time to record it."""
        if version != self.seen:
            self.seen, self.seen_at = version, now
        if version <= self.recorded:
            return False
        quiet = now - self.seen_at >= COMMITS_QUIET_SECONDS
        overdue = self.recorded >= 0 and now - self.recorded_at >= max_wait
        if quiet or overdue:
            self.recorded, self.recorded_at = version, now
            return True
        return False


@dg.sensor(
    minimum_interval_seconds=get_settings().new_data_poll_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def bronze_cdc_commits_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    """Record bronze CDC commits made outside Dagster runs (the follow-mode consumer) as materializations.

    The automation builds silver from bronze materializations, and the follow-mode consumer is not a Dagster
    run: without this sensor its trading changes would wait for the next drain run. The cursor holds what
    `TableCommits` knows per table; see `COMMITS_QUIET_SECONDS` for when a commit is recorded.
    """
    known = {t: TableCommits(*v) for t, v in (json.loads(context.cursor) if context.cursor else {}).items()}
    now = time.time()
    events = []
    for topic, key in TOPIC_KEYS.items():
        table = route_for(topic).table
        delta = lake.lake.table("bronze", table)
        if delta is None:
            continue
        commits = known.setdefault(table, TableCommits())
        previous = commits.recorded
        max_wait = TICKS_MAX_WAIT_SECONDS if topic == TICKS_TOPIC else TRADING_MAX_WAIT_SECONDS
        if not commits.observe(delta.version(), now, max_wait):
            continue
        # A drain run's commit is recorded by the run itself.
        committed_at = delta.history(1)[0]["timestamp"] / 1000
        latest = context.instance.get_latest_materialization_event(key)
        if latest is not None and latest.timestamp >= committed_at:
            continue
        events.append(
            dg.AssetMaterialization(
                asset_key=key,
                description="commits of the follow-mode consumer",
                metadata={DELTA_VERSION: commits.recorded, PREVIOUS_DELTA_VERSION: previous},
            )
        )
    cursor = {t: [c.recorded, c.recorded_at, c.seen, c.seen_at] for t, c in known.items()}
    return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor))


defs = dg.Definitions(
    assets=[bronze_cdc],
    asset_checks=[cdc_dead_letter_rate, *cdc_table_checks],
    jobs=[bronze_cdc_job],
    schedules=[bronze_cdc_floor_schedule],
    sensors=[bronze_cdc_lag_sensor, bronze_cdc_commits_sensor],
)
