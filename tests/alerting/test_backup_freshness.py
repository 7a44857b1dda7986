"""The backup-freshness alert: the sensor opens it (and the webhook and e-mail receive it) while backups are
configured but none is recent, keeps one row while the condition lasts, and resolves it once a backup exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra import db
from infra.backup import BACKUP_FRESHNESS_ALERT, check_backup_freshness, create_backup
from infra.lake import Lake
from infra.settings import get_settings
from orchestration import alerting
from tests.alerting.test_sensors import _evaluate


def _open_rows(database_url: str) -> list[tuple]:
    with db.connect(database_url) as conn:
        return conn.execute(
            "SELECT kind, severity, title, occurrences FROM ops.alerts WHERE dedup_key = %s AND resolved_at IS NULL",
            (BACKUP_FRESHNESS_ALERT,),
        ).fetchall()


def test_a_missing_or_old_backup_raises_the_freshness_alert_until_a_fresh_one_exists(
    alert_channels, warehouse, instance, database_url, tmp_path: Path, monkeypatch
) -> None:
    webhook, inbox = alert_channels
    monkeypatch.setenv("OPTIBID_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("OPTIBID_BACKUP_KEY", raising=False)
    get_settings.cache_clear()
    _, message = _evaluate(alerting.alert_on_stale_backup, instance, warehouse, None)
    assert "not configured" in message and _open_rows(database_url) == []

    monkeypatch.setenv("OPTIBID_BACKUP_KEY", "a backup key of enough length")
    get_settings.cache_clear()
    _, message = _evaluate(alerting.alert_on_stale_backup, instance, warehouse, None)
    _evaluate(alerting.alert_on_stale_backup, instance, warehouse, None)
    [(kind, severity, title, occurrences)] = _open_rows(database_url)
    assert (kind, severity, occurrences) == ("freshness", "error", 2) and title.startswith("no backup in")
    assert webhook.about("no backup in") and inbox.about("no backup in")

    backup = create_backup(get_settings(), database_url, Lake(str(tmp_path / "lake")))
    _, message = _evaluate(alerting.alert_on_stale_backup, instance, warehouse, None)
    assert "newest backup 0.0 h old" in message and _open_rows(database_url) == []

    # a day and a half later, with no newer backup, it opens again, naming the age
    later = backup.created_at + timedelta(hours=36)
    with db.connect(database_url) as conn:
        title = check_backup_freshness(conn, get_settings(), now=later)
    assert title == "newest backup is 36.0 h old (limit 26 h)"
    assert _open_rows(database_url)[0][2] == title
    assert later > datetime.now(UTC)
