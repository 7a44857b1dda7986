"""Sensors: react to new data (broker lag, landed files); on by default, a running platform needs them."""

import hashlib
import json
import time
from dataclasses import dataclass

import dagster as dg

from assets.bronze.cdc import TOPIC_KEYS, CdcTopicsConfig, lag_by_topic
from assets.bronze.files import landing_files_by_org
from infra.settings import get_settings
from ingestion.cdc import CdcConsumer, route_for
from ingestion.cdc.ownership import follow_mode_active
from ingestion.cdc.topics import TICKS_TOPIC
from orchestration.jobs import bronze_cdc_job, landing_files_job
from orchestration.resources import BrokerResource, LakeResource, WarehouseResource

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


@dg.sensor(
    job=landing_files_job,
    minimum_interval_seconds=get_settings().new_data_poll_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_folder_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Start a landing run when files wait in the landing folder; one run per distinct set of files."""
    landing = get_settings().resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    waiting = landing_files_by_org(landing)
    if not waiting:
        return dg.SkipReason(f"no files waiting in {landing}")
    fingerprint = "|".join(f"{org}/{path.name}:{path.stat().st_mtime_ns}" for org, path in waiting)
    run_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, tags={"optibid/files": str(len(waiting))})])


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
                metadata={"delta_version": commits.recorded, "previous_delta_version": previous},
            )
        )
    cursor = {t: [c.recorded, c.recorded_at, c.seen, c.seen_at] for t, c in known.items()}
    return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor))


SENSORS: list[dg.SensorDefinition] = [
    bronze_cdc_lag_sensor,
    bronze_cdc_commits_sensor,
    landing_folder_sensor,
]
