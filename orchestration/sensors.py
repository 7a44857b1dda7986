"""Sensors: react to new data (broker lag, landed files); on by default, a running platform needs them."""

import hashlib
import json
import time

import dagster as dg

from assets.bronze.cdc import TOPIC_KEYS, CdcTopicsConfig, lag_by_topic
from assets.bronze.files import landing_files_by_org
from infra.settings import get_settings
from ingestion.cdc import CdcConsumer, route_for
from ingestion.cdc.topics import TICKS_TOPIC
from orchestration.jobs import bronze_cdc_job, landing_files_job
from orchestration.resources import BrokerResource, LakeResource

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
        minimum_interval_seconds=get_settings().sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext, broker: BrokerResource, lake: LakeResource):
        """Start a CDC run when Kafka is more than `OPTIBID_CDC_LAG_THRESHOLD` events ahead of bronze."""
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
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
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


# Ticks feed the minute KPIs through the real-time path within seconds; their batch reconciliation (silver and
# gold of the recent days) need not follow every batch, which on two cores would keep Spark busy for ever.
TICKS_RECONCILE_SECONDS = 15 * 60


@dg.sensor(
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def bronze_cdc_commits_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    """Record bronze CDC commits made outside Dagster runs (the follow-mode consumer) as materializations.

    The automation builds silver from bronze materializations, and the follow-mode consumer is not a Dagster
    run: without this sensor its trading changes would wait for the next drain run. The cursor holds the
    Delta version last recorded per table; ticks are recorded at most every `TICKS_RECONCILE_SECONDS`.
    """
    recorded: dict[str, list[float]] = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    events = []
    for topic, key in TOPIC_KEYS.items():
        table = route_for(topic).table
        delta = lake.lake.table("bronze", table)
        if delta is None:
            continue
        version = delta.version()
        last_version, last_at = recorded.get(table, [-1, 0.0])
        if version <= last_version:
            continue
        if topic == TICKS_TOPIC and now - last_at < TICKS_RECONCILE_SECONDS and last_version >= 0:
            continue
        recorded[table] = [version, now]
        # A drain run's commit is recorded by the run itself.
        committed_at = delta.history(1)[0]["timestamp"] / 1000
        latest = context.instance.get_latest_materialization_event(key)
        if latest is not None and latest.timestamp >= committed_at:
            continue
        events.append(
            dg.AssetMaterialization(
                asset_key=key,
                description="commits of the follow-mode consumer",
                metadata={"delta_version": version, "previous_delta_version": last_version},
            )
        )
    return dg.SensorResult(asset_events=events, cursor=json.dumps(recorded))


SENSORS: list[dg.SensorDefinition] = [
    bronze_cdc_lag_sensor,
    bronze_cdc_commits_sensor,
    landing_folder_sensor,
]
