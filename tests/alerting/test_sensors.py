"""Alerts from real Dagster runs: a blocking check that fails, a run that fails, anomalies the pipeline writes.
The alert sensors are evaluated against the instance that holds those runs, deliver to a real local SMTP
server and HTTP receiver, de-duplicate while the condition lasts and resolve when it clears."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from infra import db
from orchestration import alerting

PRIVATE_SAMPLE = "org_b bid 4242.42 EUR/MWh"  # what a failing check may sample from org-private rows


class ProbeConfig(dg.Config):
    value: int = 1


class FlakyConfig(dg.Config):
    fail: bool = False


def _probe_defs(name: str) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """An asset whose blocking check fails while its configured value is negative (with a private sample)."""
    partitions = dg.StaticPartitionsDefinition(["2026-01-05"])

    @dg.asset(name=name, partitions_def=partitions)
    def probe(config: ProbeConfig) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"value": config.value})

    @dg.asset_check(asset=probe, blocking=True, partitions_def=partitions)
    def value_not_negative(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        value = event.asset_materialization.metadata["value"].value
        failures = [] if value >= 0 else [{"expectation": "expect_non_negative", "sample": [PRIVATE_SAMPLE]}]
        return dg.AssetCheckResult(
            passed=value >= 0,
            description=f"e.g. {PRIVATE_SAMPLE}" if failures else "ok",
            metadata={
                "row_count": 3,
                "failed_expectations": len(failures),
                "failing": ["expect_non_negative(value)"] if failures else [],
                "failures": failures,
            },
        )

    return probe, value_not_negative


def _materialize(instance, probe, check, value: int) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [probe, check],
        instance=instance,
        partition_key="2026-01-05",
        run_config={"ops": {probe.op.name: {"config": {"value": value}}}},
        raise_on_error=False,
    )


def _evaluate(sensor, instance, warehouse, cursor: str | None) -> tuple[str | None, str]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"warehouse": warehouse})
    result = sensor(context)
    return context.cursor, getattr(result, "skip_message", "") or ""


def _alert_rows(database_url: str, dedup_prefix: str) -> list[dict]:
    with db.connect(database_url) as conn:
        cur = conn.execute(
            """SELECT kind, severity, org_id, occurrences, resolved_at, detail, resolution, notified_channels,
                      resolution_notified_channels, delivery_pending
               FROM ops.alerts WHERE starts_with(dedup_key, %s) ORDER BY alert_id""",
            (dedup_prefix,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_failed_blocking_check_alerts_once_and_resolves(database_url, alert_channels, warehouse, instance):
    hook, inbox = alert_channels
    name = f"alerting_probe_{uuid.uuid4().hex[:8]}"
    probe, check = _probe_defs(name)
    key = f"check_failure:{name}:value_not_negative:2026-01-05"

    failed = _materialize(instance, probe, check, value=-1)
    assert not failed.success  # the blocking check stopped the run
    cursor, message = _evaluate(alerting.alert_on_check_evaluations, instance, warehouse, None)
    assert "1 failing" in message

    [row] = _alert_rows(database_url, key)
    assert (row["kind"], row["severity"], row["org_id"], row["resolved_at"]) == ("check_failure", "error", None, None)
    assert row["detail"]["summary"] == {
        "row_count": 3,
        "failed_expectations": 1,
        "failing": ["expect_non_negative(value)"],
    }
    assert len(row["notified_channels"]) == 2 and not row["delivery_pending"]
    [body] = hook.about(key)
    assert body["text"].startswith("[ERROR] Blocking check failed") and body["blocks"] and body["attachments"]
    assert body["alert"]["status"] == "open" and body["alert"]["dedup_key"] == key
    [mail] = inbox.about(key)
    assert mail["To"] == "oncall@example.test" and "[ERROR]" in mail["Subject"]
    # A platform alert never carries samples of org-private rows, to any channel.
    everything = json.dumps(hook.bodies) + "".join(m.as_string() for m in inbox.messages) + json.dumps(row["detail"])
    assert PRIVATE_SAMPLE not in everything

    # The condition lasts: evaluated again (nothing new), then failing again -> one row, no second delivery.
    cursor, _ = _evaluate(alerting.alert_on_check_evaluations, instance, warehouse, cursor)
    assert not _materialize(instance, probe, check, value=-5).success
    cursor, _ = _evaluate(alerting.alert_on_check_evaluations, instance, warehouse, cursor)
    [row] = _alert_rows(database_url, key)
    assert row["occurrences"] == 2 and row["resolved_at"] is None
    assert len(hook.about(key)) == 1 and len(inbox.about(key)) == 1

    # The check passes again -> resolved, and the resolution reaches both channels once.
    assert _materialize(instance, probe, check, value=3).success
    cursor, message = _evaluate(alerting.alert_on_check_evaluations, instance, warehouse, cursor)
    assert "1 resolved" in message
    [row] = _alert_rows(database_url, key)
    assert row["resolved_at"] is not None and len(row["resolution_notified_channels"]) == 2
    bodies = hook.about(key)
    assert [b["alert"]["status"] for b in bodies] == ["open", "resolved"]
    assert bodies[1]["text"].startswith("[RESOLVED]")
    assert [("[RESOLVED]" in m["Subject"]) for m in inbox.about(key)] == [False, True]
    _evaluate(alerting.alert_on_check_evaluations, instance, warehouse, cursor)
    assert len(hook.about(key)) == 2 and len(inbox.about(key)) == 2


def test_failed_run_alerts_and_a_later_success_resolves(database_url, alert_channels, warehouse, instance):
    hook, inbox = alert_channels
    name = f"alerting_flaky_{uuid.uuid4().hex[:8]}"

    @dg.asset(name=name)
    def flaky(config: FlakyConfig) -> None:
        if config.fail:
            raise RuntimeError(f"upstream sent {PRIVATE_SAMPLE}")

    def run(fail: bool) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [flaky],
            instance=instance,
            run_config={"ops": {name: {"config": {"fail": fail}}}},
            raise_on_error=False,
            tags={alerting.ORG_TAG: "org_a"},
        )

    def sensor_context(result: dg.ExecuteInProcessResult, event: dg.DagsterEvent) -> dg.RunStatusSensorContext:
        return dg.build_run_status_sensor_context(
            sensor_name="alert_sensor_under_test",
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"warehouse": warehouse},
        )

    for _ in range(2):  # the second failure of the same selection is a repeat, not a new alert
        failed = run(fail=True)
        assert not failed.success
        alerting.alert_on_run_failure(sensor_context(failed, failed.get_run_failure_event()).for_run_failure())
    key = alerting.run_failure_dedup_key(failed.dagster_run)
    [row] = _alert_rows(database_url, key)
    assert (row["kind"], row["org_id"], row["occurrences"]) == ("run_failure", "org_a", 2)
    assert row["detail"]["failed_steps"] == [name] and row["detail"]["error_classes"]
    assert PRIVATE_SAMPLE not in json.dumps(row["detail"])
    assert len(hook.about(key)) == 1 and len(inbox.about(key)) == 1

    succeeded = run(fail=False)
    assert succeeded.success
    alerting.resolve_on_run_success(sensor_context(succeeded, succeeded.get_run_success_event()))
    [row] = _alert_rows(database_url, key)
    assert row["resolved_at"] is not None
    assert row["resolution"] == {"succeeded_run_id": succeeded.run_id}
    assert [b["alert"]["status"] for b in hook.about(key)] == ["open", "resolved"]
    assert len(inbox.about(key)) == 2


def test_anomalies_written_by_the_pipeline_alert_per_zone_and_day(database_url, alert_channels, warehouse, instance):
    from ml.forecasting import warehouse as forecast_writes

    hook, _ = alert_channels
    zone = f"Z{uuid.uuid4().hex[:6].upper()}"
    day = datetime.now(UTC).date() - timedelta(days=1)
    ts = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=14)
    flagged = pd.DataFrame(
        {
            "zone": [zone, zone],
            "ts_utc": [ts, ts + pd.Timedelta(hours=1)],
            "target": ["price", "price"],
            "kind": ["spike", "spike"],
            "score": [7.5, -6.0],
            "value": [900.0, 850.0],
            "expected": [40.0, 41.0],
            "method": ["deseasonalised", "deseasonalised"],
            "market_date": [day, day],
        }
    )
    with db.connect(database_url) as conn:
        forecast_writes.replace_anomalies(conn, day, ["price"], flagged)
    key = f"anomaly:{zone}:{day}"
    cursor, _ = _evaluate(alerting.alert_on_anomalies, instance, warehouse, None)
    [row] = _alert_rows(database_url, key)
    assert row["detail"]["hours"] == 2 and row["detail"]["kinds"] == ["price/spike"]
    assert len(hook.about(key)) == 1
    cursor, _ = _evaluate(alerting.alert_on_anomalies, instance, warehouse, cursor)
    assert _alert_rows(database_url, key)[0]["occurrences"] == 1  # nothing newly detected

    with db.connect(database_url) as conn:  # a re-run of the day that no longer flags the zone
        forecast_writes.replace_anomalies(conn, day, ["price"], flagged.iloc[0:0])
    _evaluate(alerting.alert_on_anomalies, instance, warehouse, cursor)
    [row] = _alert_rows(database_url, key)
    assert row["resolved_at"] is not None and row["resolution"] == {"reason": "no longer flagged"}
    assert [b["alert"]["status"] for b in hook.about(key)] == ["open", "resolved"]
