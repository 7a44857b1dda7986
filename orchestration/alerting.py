"""Alert sensors: turn failed runs, failed blocking checks, missed freshness, drift and detected anomalies into
rows of `ops.alerts`, resolve them when the condition clears, and deliver the notices (`infra/alerts.py`).

Every sensor here is on by default and ends its tick by delivering whatever notice is queued, so a notice
that failed to reach a channel is retried on the next tick of any of them.

- `alert_on_run_failure` / `resolve_on_run_success`: a failed run opens an alert keyed by its job, asset
  selection and partition; a later successful run of the same selection (or a successful re-execution of the
  failed run) resolves it. Runs launched by the automation sensor or schedules are covered (all jobs of the
  code location, including the implicit asset job).
- `alert_on_check_evaluations`: reads new ASSET_CHECK_EVALUATION events after its cursor; a failed blocking
  check opens an alert per check and partition, its next passing evaluation resolves it. The drift check of
  `ml/drift_report` opens a `drift` alert instead. Alert details keep the check's summary (counts, failing
  expectation names), never row samples: check alerts are platform alerts every organization sees.
- `alert_on_missed_freshness`: reads the freshness state of every asset with a freshness policy. The state is
  computed by the Dagster daemon's freshness daemon (on by default, every 30 s), so this needs
  `dagster-daemon` (or `dg dev`) running; WARN/FAIL open an alert, PASS resolves it.
- `alert_on_stale_backup`: opens a `freshness` alert when backups are configured (`OPTIBID_BACKUP_KEY`) and
  the newest one is older than `OPTIBID_BACKUP_MAX_AGE_HOURS` or missing; resolves when a fresh one exists.
- `alert_on_anomalies`: new rows of `gold.anomalies` for recent market days open one alert per zone and day;
  it resolves when a re-run no longer flags that day, or once the day leaves the alerting window.
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from assets.forecasting import drift_share_below_threshold
from assets.shared.resources import WarehouseResource
from infra import alerts
from infra.settings import get_settings

ORG_TAG = "optibid/org_id"  # a run tagged with an organization raises alerts only that organization sees
ANOMALY_ALERT_DAYS = 2  # anomalies of market days older than this are history, not news
CHECK_EVENTS_PER_TICK = 1000
# Summary-only check metadata: numbers, plus these names-and-counts entries (never `failures` with samples).
_SAFE_CHECK_METADATA = ("failing", "unexpected_counts", "zones_over_threshold")
_RUN_TAG_PARTITION = "dagster/partition"
_RUN_TAG_RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")

DRIFT_CHECK = next(iter(drift_share_below_threshold.check_keys))


def _deliver(warehouse: WarehouseResource) -> alerts.DeliveryReport:
    settings = get_settings()
    with warehouse.connect() as conn:
        return alerts.deliver_pending(
            conn, alerts.channels_from_settings(settings), settings.alert_delivery_max_attempts
        )


# --- runs -----------------------------------------------------------------------------------------------


def _run_partition(run: dg.DagsterRun) -> str | None:
    if _RUN_TAG_PARTITION in run.tags:
        return run.tags[_RUN_TAG_PARTITION]
    start, end = (run.tags.get(t) for t in _RUN_TAG_RANGE)
    return f"{start}...{end}" if start and end else None


def _run_assets(run: dg.DagsterRun) -> list[str]:
    return sorted(k.to_user_string() for k in (run.asset_selection or ()))


def run_failure_dedup_key(run: dg.DagsterRun) -> str:
    """One open alert per job, asset selection and partition: a retry that fails again is a repeat."""
    assets = _run_assets(run)
    selection = hashlib.sha256("|".join(assets).encode()).hexdigest()[:12] if assets else "all"
    return f"run_failure:{run.job_name}:{selection}:{_run_partition(run) or '-'}"


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an alert for every failed run (ops.alerts) and delivers it to the alert channels.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, warehouse: WarehouseResource) -> None:
    run = context.dagster_run
    steps = context.get_step_failure_events()
    assets = _run_assets(run)
    detail = {
        "run_id": run.run_id,
        "root_run_id": run.tags.get("dagster/root_run_id", run.run_id),
        "job_name": run.job_name,
        "assets": assets,
        "partition": _run_partition(run),
        "failed_steps": sorted({e.step_key for e in steps if e.step_key}),
        # Error classes, not messages: messages may quote data the alert's readers must not see.
        "error_classes": sorted(
            {e.event_specific_data.error.cls_name for e in steps if getattr(e.event_specific_data, "error", None)}
        ),
        "message": (context.failure_event.message or "")[:500],
    }
    what = ", ".join(assets[:3]) + (f" and {len(assets) - 3} more" if len(assets) > 3 else "") or run.job_name
    partition = _run_partition(run)
    with warehouse.connect() as conn:
        alerts.raise_alert(
            conn,
            kind="run_failure",
            dedup_key=run_failure_dedup_key(run),
            title=f"Run failed: {what}" + (f" [{partition}]" if partition else ""),
            severity="error",
            detail=detail,
            org_id=run.tags.get(ORG_TAG),
            asset_key=assets[0] if len(assets) == 1 else None,
            partition=partition,
        )
    _deliver(warehouse)


@dg.run_status_sensor(
    name="resolve_on_run_success",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Resolves run-failure alerts when the same job and selection (or a re-execution) succeeds.",
)
def resolve_on_run_success(context: dg.RunStatusSensorContext, warehouse: WarehouseResource) -> None:
    run = context.dagster_run
    assets, partition = set(_run_assets(run)), _run_partition(run)
    root = run.tags.get("dagster/root_run_id", run.run_id)
    resolved = 0
    with warehouse.connect() as conn:
        for alert in alerts.open_alerts(conn, "run_failure", f"run_failure:{run.job_name}:"):
            failed_assets = set(alert.detail.get("assets") or ())
            same_selection = failed_assets <= assets if failed_assets else not assets
            if alert.detail.get("root_run_id") == root or (
                same_selection and alert.detail.get("partition") == partition
            ):
                alerts.resolve_alert(conn, alert.dedup_key, {"succeeded_run_id": run.run_id})
                resolved += 1
    if resolved:
        _deliver(warehouse)


# --- asset checks and drift -----------------------------------------------------------------------------


def check_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """The parts of a check's metadata that are safe in a platform alert: numbers and expectation names."""
    out: dict[str, Any] = {}
    for key, entry in metadata.items():
        value = getattr(entry, "value", entry)
        if isinstance(value, bool | int | float) or key in _SAFE_CHECK_METADATA:
            out[key] = value
    return out


def _check_evaluation_records(instance: dg.DagsterInstance, after: int | None) -> list[Any]:
    # get_event_records is the public way to read check evaluations of every check after a storage id; it is
    # deprecated for materializations and run events only, and its warning would repeat on every tick.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(
            instance.get_event_records(
                dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
                limit=CHECK_EVENTS_PER_TICK,
                ascending=True,
            )
        )


@dg.sensor(
    name="alert_on_check_evaluations",
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens alerts for failed blocking asset checks and drift, and resolves them when they pass.",
)
def alert_on_check_evaluations(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SkipReason:
    after = int(context.cursor) if context.cursor else None
    records = _check_evaluation_records(context.instance, after)
    # The latest evaluation per check and partition decides; earlier ones in the batch are history.
    latest: dict[tuple[dg.AssetCheckKey, str | None], Any] = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        latest[(evaluation.asset_check_key, evaluation.partition)] = (record, evaluation)
    opened = resolved = 0
    with warehouse.connect() as conn:
        for (check_key, partition), (record, evaluation) in latest.items():
            is_drift = check_key == DRIFT_CHECK
            if not (is_drift or evaluation.blocking):
                continue
            asset = check_key.asset_key.to_user_string()
            kind = "drift" if is_drift else "check_failure"
            dedup_key = f"{kind}:{asset}:{check_key.name}:{partition or '-'}"
            if evaluation.passed:
                resolved += alerts.resolve_alert(conn, dedup_key, {"run_id": record.event_log_entry.run_id}) is not None
                continue
            summary = check_summary(dict(evaluation.metadata))
            title = (
                f"Drift above threshold in {asset}"
                if is_drift
                else f"Blocking check failed: {asset} {check_key.name}" + (f" [{partition}]" if partition else "")
            )
            severity = "warning" if is_drift or evaluation.severity == dg.AssetCheckSeverity.WARN else "error"
            alerts.raise_alert(
                conn,
                kind=kind,
                dedup_key=dedup_key,
                title=title,
                severity=severity,
                detail={"check": check_key.name, "run_id": record.event_log_entry.run_id, "summary": summary},
                asset_key=asset,
                partition=partition,
            )
            opened += 1
    if records:
        context.update_cursor(str(records[-1].storage_id))
    report = _deliver(warehouse)
    return dg.SkipReason(
        f"{len(records)} check evaluations: {opened} failing, {resolved} resolved;"
        f" {report.delivered} notices delivered, {report.failed} failed"
    )


# --- freshness ------------------------------------------------------------------------------------------


def _assets_with_freshness_policy(context: dg.SensorEvaluationContext) -> list[dg.AssetKey]:
    graph = context.repository_def.asset_graph if context.repository_def else None
    if graph is None:
        return list(context.instance.get_asset_keys())
    return [k for k in graph.get_all_asset_keys() if graph.get(k).freshness_policy is not None]


@dg.sensor(
    name="alert_on_missed_freshness",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an alert when an asset misses its freshness policy (daemon-evaluated), resolves when fresh.",
)
def alert_on_missed_freshness(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SkipReason:
    keys = _assets_with_freshness_policy(context)
    records = context.instance.get_freshness_state_records(keys) if keys else {}
    stale = 0
    with warehouse.connect() as conn:
        for key, record in records.items():
            asset = key.to_user_string()
            state = str(getattr(record.freshness_state, "value", record.freshness_state))
            dedup_key = f"freshness:{asset}"
            if state in ("WARN", "FAIL"):
                stale += 1
                alerts.raise_alert(
                    conn,
                    kind="freshness",
                    dedup_key=dedup_key,
                    title=f"{asset} is {'stale' if state == 'FAIL' else 'about to be stale'} (freshness {state})",
                    severity="error" if state == "FAIL" else "warning",
                    detail={"freshness_state": state, "state_since": record.updated_at.isoformat()},
                    asset_key=asset,
                )
            elif state in ("PASS", "NOT_APPLICABLE"):
                alerts.resolve_alert(conn, dedup_key, {"freshness_state": state})
    report = _deliver(warehouse)
    return dg.SkipReason(
        f"{len(records)} of {len(keys)} assets with a freshness policy evaluated, {stale} stale;"
        f" {report.delivered} notices delivered"
    )


# --- anomalies ------------------------------------------------------------------------------------------


@dg.sensor(
    name="alert_on_anomalies",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an alert per zone and recent market day with newly detected anomalies (gold.anomalies).",
)
def alert_on_anomalies(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SkipReason:
    since = datetime.fromisoformat(context.cursor) if context.cursor else datetime.min.replace(tzinfo=UTC)
    first_day = datetime.now(UTC).date() - timedelta(days=ANOMALY_ALERT_DAYS)
    with warehouse.connect() as conn:
        if conn.execute("SELECT to_regclass('gold.anomalies')").fetchone()[0] is None:
            return dg.SkipReason("gold.anomalies does not exist yet")
        groups = conn.execute(
            """SELECT zone, market_date, count(*), max(detected_at), max(abs(score)),
                      array_agg(DISTINCT target || '/' || kind ORDER BY target || '/' || kind)
               FROM gold.anomalies WHERE market_date >= %s GROUP BY zone, market_date""",
            (first_day,),
        ).fetchall()
        flagged = {f"anomaly:{zone}:{day}" for zone, day, *_ in groups}
        newest, opened = since, 0
        for zone, day, count, detected_at, max_score, kinds in groups:
            newest = max(newest, detected_at)
            if detected_at <= since:
                continue
            opened += 1
            alerts.raise_alert(
                conn,
                kind="anomaly",
                dedup_key=f"anomaly:{zone}:{day}",
                title=f"{count} anomalous hours in {zone} on {day} ({', '.join(kinds)})",
                severity="warning",
                detail={
                    "zone": zone,
                    "market_date": str(day),
                    "hours": count,
                    "kinds": kinds,
                    "max_abs_score": float(max_score),
                },
                asset_key="gold/anomalies",
                partition=str(day),
            )
        for alert in alerts.open_alerts(conn, "anomaly"):
            if alert.dedup_key not in flagged:
                day = date.fromisoformat(alert.partition) if alert.partition else first_day
                reason = "no longer flagged" if day >= first_day else "market day left the alerting window"
                alerts.resolve_alert(conn, alert.dedup_key, {"reason": reason})
    context.update_cursor(newest.isoformat())
    report = _deliver(warehouse)
    return dg.SkipReason(f"{opened} zone-days with new anomalies; {report.delivered} notices delivered")


# --- backups ---------------------------------------------------------------------------------------------


@dg.sensor(
    name="alert_on_stale_backup",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an alert when the newest backup is older than OPTIBID_BACKUP_MAX_AGE_HOURS (or missing).",
)
def alert_on_stale_backup(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SkipReason:
    from infra.backup import check_backup_freshness

    with warehouse.connect() as conn:
        found = check_backup_freshness(conn, get_settings())
    report = _deliver(warehouse)
    return dg.SkipReason(f"{found}; {report.delivered} notices delivered")


ALERT_SENSORS: list[dg.SensorDefinition] = [
    alert_on_run_failure,
    resolve_on_run_success,
    alert_on_check_evaluations,
    alert_on_missed_freshness,
    alert_on_anomalies,
    alert_on_stale_backup,
]
