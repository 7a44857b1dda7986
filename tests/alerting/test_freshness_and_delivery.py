"""Missed freshness, as computed by the real Dagster daemon, becomes an alert and resolves when the asset is
fresh again; a channel that fails is retried on later ticks, a bounded number of times, without raising."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from infra import alerts, db
from orchestration import alerting
from tests.alerting import freshness_defs

REPO_ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def daemon_instance(tmp_path) -> tuple[dg.DagsterInstance, subprocess.Popen]:
    """A Dagster instance folder served by a real `dagster-daemon` (freshness daemon every 2 s)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2",
        "PYTHONPATH": str(REPO_ROOT),
    }
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "tests.alerting.freshness_defs"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance, daemon
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        instance.dispose()
        log.close()


def test_missed_freshness_alerts_and_resolves(database_url, alert_channels, warehouse, daemon_instance):
    hook, inbox = alert_channels
    instance, _daemon = daemon_instance
    key = dg.AssetKey(freshness_defs.FRESHNESS_PROBE)
    dedup_key = f"freshness:{freshness_defs.FRESHNESS_PROBE}"
    with db.connect(database_url) as conn:  # a previous run of this test left its alert open
        alerts.resolve_alert(conn, dedup_key)
        conn.execute("UPDATE ops.alerts SET delivery_pending = false WHERE dedup_key = %s", (dedup_key,))

    def evaluate() -> str:
        context = dg.build_sensor_context(
            instance=instance, definitions=freshness_defs.defs, resources={"warehouse": warehouse}
        )
        return alerting.alert_on_missed_freshness(context).skip_message

    def state() -> str | None:
        record = instance.get_freshness_state_records([key]).get(key)
        return str(record.freshness_state.value) if record else None

    def open_row():
        with db.connect(database_url) as conn:
            return conn.execute(
                "SELECT severity, occurrences FROM ops.alerts WHERE dedup_key = %s AND resolved_at IS NULL",
                (dedup_key,),
            ).fetchone()

    assert dg.materialize([freshness_defs.freshness_probe], instance=instance).success
    _wait_for(lambda: state() == "PASS", 120, "the freshness daemon to record PASS")
    evaluate()
    assert open_row() is None

    # Nothing materializes it for over a minute: the daemon records FAIL and the sensor alerts, once.
    _wait_for(lambda: state() == "FAIL", 150, "the freshness daemon to record FAIL")
    assert "1 stale" in evaluate()
    evaluate()
    assert open_row() == ("error", 2)
    assert len(hook.about(dedup_key)) == 1 and len(inbox.about(dedup_key)) == 1

    assert dg.materialize([freshness_defs.freshness_probe], instance=instance).success
    _wait_for(lambda: state() == "PASS", 60, "the freshness daemon to record PASS again")
    evaluate()
    assert open_row() is None
    assert [b["alert"]["status"] for b in hook.about(dedup_key)] == ["open", "resolved"]
    assert len(inbox.about(dedup_key)) == 2


def test_failed_delivery_is_recorded_retried_and_bounded(database_url, alert_channels):
    from infra.settings import get_settings

    hook, inbox = alert_channels
    settings = get_settings()
    channels = alerts.channels_from_settings(settings)
    dead_smtp = alerts.EmailChannel("127.0.0.1", 9, "a@example.test", ["b@example.test"], timeout_seconds=2)
    dedup_key = f"test:delivery:{uuid.uuid4().hex[:8]}"

    def row():
        with db.connect(database_url) as conn:
            return conn.execute(
                """SELECT notified_channels, delivery_pending, delivery_attempts, last_delivery_error
                   FROM ops.alerts WHERE dedup_key = %s""",
                (dedup_key,),
            ).fetchone()

    hook.fail_next = 1  # the webhook answers 500 once
    with db.connect(database_url) as conn:
        alerts.raise_alert(conn, kind="anomaly", dedup_key=dedup_key, title="delivery probe", severity="info")
    with db.connect(database_url) as conn:
        report = alerts.deliver_pending(conn, channels, max_attempts=3)
    assert (report.delivered, report.failed) == (1, 1)  # e-mail went out, the webhook failed
    notified, pending, attempts, error = row()
    assert notified == ["email"] and pending and attempts == 1
    assert "HTTP 500" in error and hook.url not in error  # the URL (a secret) is never stored

    with db.connect(database_url) as conn:  # next tick: only the webhook is retried
        alerts.deliver_pending(conn, channels, max_attempts=3)
    assert len(hook.about(dedup_key)) == 1 and len(inbox.about(dedup_key)) == 1
    assert row()[1:3] == (False, 0)

    # A channel that never answers is given up after max_attempts ticks; delivering never raises.
    other_key = f"{dedup_key}:dead"
    with db.connect(database_url) as conn:
        alerts.raise_alert(conn, kind="anomaly", dedup_key=other_key, title="dead channel", severity="info")
    for _ in range(4):
        with db.connect(database_url) as conn:
            alerts.deliver_pending(conn, [dead_smtp], max_attempts=3)
    with db.connect(database_url) as conn:
        pending, attempts, error = conn.execute(
            "SELECT delivery_pending, delivery_attempts, last_delivery_error FROM ops.alerts WHERE dedup_key = %s",
            (other_key,),
        ).fetchone()
    assert (pending, attempts) == (False, 3) and error.startswith("email: ")
