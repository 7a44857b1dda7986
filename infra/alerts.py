"""Alerts: record, de-duplicate, resolve and deliver them (`ops.alerts`, infra/sql/100_alerts.sql).

What belongs here: the alert lifecycle on a psycopg connection and delivery to the configured channels (a
generic JSON webhook with a Slack-compatible payload, and e-mail over SMTP). No Dagster import: the sensors
in `orchestration/alerting.py` decide *when* a condition holds or clears and call `raise_alert` /
`resolve_alert`, then `deliver_pending`.

Lifecycle: one open row per `dedup_key`. Raising an open condition again bumps `last_seen`/`occurrences`
and delivers nothing, unless the severity rises (the escalated alert is delivered again). Resolving it sets
`resolved_at` and queues a resolution notice for the channels that received the alert. Every notice is
retried on later calls of `deliver_pending` until each channel has it or the attempts are used up; a
delivery failure is recorded on the row and never raised.
"""

from __future__ import annotations

import hashlib
import json
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import httpx
import psycopg
from psycopg.rows import dict_row
from pydantic import SecretStr

from infra.settings import Settings

AlertKind = Literal["run_failure", "check_failure", "freshness", "drift", "anomaly"]
Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")
_ALERT_COLUMNS = (
    "alert_id, org_id, kind, severity, dedup_key, title, detail, asset_key, partition, first_seen, last_seen,"
    " occurrences, resolved_at, resolution"
)


@dataclass(frozen=True)
class RaiseOutcome:
    """What `raise_alert` did: opened a new alert, repeated an open one, or escalated its severity."""

    alert_id: int
    status: Literal["opened", "repeated", "escalated"]


@dataclass(frozen=True)
class Alert:
    """One row of ops.alerts, as delivered to channels."""

    alert_id: int
    org_id: str | None
    kind: str
    severity: str
    dedup_key: str
    title: str
    detail: dict[str, Any]
    asset_key: str | None
    partition: str | None
    first_seen: datetime
    last_seen: datetime
    occurrences: int
    resolved_at: datetime | None
    resolution: dict[str, Any] | None

    @property
    def status(self) -> str:
        return "resolved" if self.resolved_at else "open"

    def as_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "status": self.status,
            "org_id": self.org_id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "dedup_key": self.dedup_key,
            "asset_key": self.asset_key,
            "partition": self.partition,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "occurrences": self.occurrences,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "detail": self.detail,
            "resolution": self.resolution,
        }


def raise_alert(
    conn: psycopg.Connection,
    *,
    kind: AlertKind,
    dedup_key: str,
    title: str,
    severity: Severity = "error",
    detail: dict[str, Any] | None = None,
    org_id: str | None = None,
    asset_key: str | None = None,
    partition: str | None = None,
) -> RaiseOutcome:
    """Open the alert of `dedup_key`, or record one more occurrence of it while it is open.

    `detail` must be safe for everyone who can see the alert: with `org_id` None that is every organization,
    so summaries (counts, names) only.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    row = conn.execute(
        """
        WITH previous AS (
            SELECT severity FROM ops.alerts WHERE dedup_key = %(key)s AND resolved_at IS NULL
        )
        INSERT INTO ops.alerts AS a (org_id, kind, severity, dedup_key, title, detail, asset_key, partition)
        VALUES (%(org)s, %(kind)s, %(severity)s, %(key)s, %(title)s, %(detail)s::jsonb, %(asset)s, %(partition)s)
        ON CONFLICT (dedup_key) WHERE resolved_at IS NULL DO UPDATE SET
            last_seen = now(),
            occurrences = a.occurrences + 1,
            title = EXCLUDED.title,
            detail = EXCLUDED.detail,
            severity = CASE WHEN array_position(%(ranks)s, EXCLUDED.severity) > array_position(%(ranks)s, a.severity)
                            THEN EXCLUDED.severity ELSE a.severity END,
            -- An escalation is news: every channel gets it again.
            notified_channels = CASE
                WHEN array_position(%(ranks)s, EXCLUDED.severity) > array_position(%(ranks)s, a.severity)
                THEN '{}'::text[] ELSE a.notified_channels END,
            delivery_pending = a.delivery_pending
                OR array_position(%(ranks)s, EXCLUDED.severity) > array_position(%(ranks)s, a.severity),
            delivery_attempts = CASE
                WHEN array_position(%(ranks)s, EXCLUDED.severity) > array_position(%(ranks)s, a.severity)
                THEN 0 ELSE a.delivery_attempts END
        RETURNING a.alert_id, (xmax = 0) AS inserted, a.severity,
                  (SELECT severity FROM previous) AS previous_severity
        """,
        {
            "org": org_id,
            "kind": kind,
            "severity": severity,
            "key": dedup_key,
            "title": title,
            "detail": json.dumps(detail or {}, default=str),
            "asset": asset_key,
            "partition": partition,
            "ranks": list(SEVERITIES),
        },
    ).fetchone()
    assert row is not None
    alert_id, inserted, now_severity, previous_severity = row
    if inserted:
        return RaiseOutcome(alert_id, "opened")
    if previous_severity is not None and now_severity != previous_severity:
        return RaiseOutcome(alert_id, "escalated")
    return RaiseOutcome(alert_id, "repeated")


def resolve_alert(conn: psycopg.Connection, dedup_key: str, resolution: dict[str, Any] | None = None) -> int | None:
    """Resolve the open alert of `dedup_key` (its id), queueing a resolution notice; None if none was open."""
    row = conn.execute(
        """UPDATE ops.alerts SET
               resolved_at = now(),
               resolution = %s::jsonb,
               -- Only channels that were told about the alert are told that it cleared.
               delivery_pending = cardinality(notified_channels) > 0,
               delivery_attempts = 0
           WHERE dedup_key = %s AND resolved_at IS NULL
           RETURNING alert_id""",
        (json.dumps(resolution or {}, default=str), dedup_key),
    ).fetchone()
    return row[0] if row else None


def open_alerts(conn: psycopg.Connection, kind: AlertKind, dedup_prefix: str = "") -> list[Alert]:
    """Open alerts of one kind (whose dedup_key starts with `dedup_prefix`), oldest first."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        f"SELECT {_ALERT_COLUMNS} FROM ops.alerts WHERE resolved_at IS NULL AND kind = %s"
        " AND starts_with(dedup_key, %s) ORDER BY alert_id",
        (kind, dedup_prefix),
    )
    return [Alert(**r) for r in cur.fetchall()]


def latest_open_alerts(conn: psycopg.Connection, limit: int = 50) -> tuple[int, list[Alert]]:
    """How many alerts are open (every kind and organization), and the `limit` most recently seen."""
    total = conn.execute("SELECT count(*) FROM ops.alerts WHERE resolved_at IS NULL").fetchone()[0]
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        f"SELECT {_ALERT_COLUMNS} FROM ops.alerts WHERE resolved_at IS NULL ORDER BY last_seen DESC, alert_id DESC"
        " LIMIT %s",
        (limit,),
    )
    return int(total), [Alert(**r) for r in cur.fetchall()]


# --- delivery -------------------------------------------------------------------------------------------


class Channel(Protocol):
    """Somewhere alerts are delivered. `channel_id` is stored on the row, so it never contains a secret."""

    channel_id: str

    def send(self, alert: Alert) -> None:
        """Deliver the alert's current state (open, or resolved); raise on failure."""


@dataclass
class WebhookChannel:
    """POSTs a Slack-compatible JSON body (`text`, `blocks`, `attachments`) plus the alert as `alert`."""

    url: SecretStr
    timeout_seconds: float = 10.0
    channel_id: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.url.get_secret_value().encode()).hexdigest()[:12]
        self.channel_id = f"webhook:{digest}"

    def send(self, alert: Alert) -> None:
        response = httpx.post(self.url.get_secret_value(), json=webhook_payload(alert), timeout=self.timeout_seconds)
        if response.status_code >= 300:
            raise DeliveryError(f"webhook answered HTTP {response.status_code}")


@dataclass
class EmailChannel:
    """Sends a plain-text e-mail over SMTP (optionally STARTTLS and login)."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    timeout_seconds: float = 10.0
    channel_id: str = "email"

    def send(self, alert: Alert) -> None:
        message = email_message(alert, self.sender, self.recipients)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password.get_secret_value() if self.password else "")
            smtp.send_message(message)


class DeliveryError(Exception):
    """A channel refused a notice."""


def channels_from_settings(settings: Settings) -> list[Channel]:
    """The channels the settings configure (none configured: alerts are only stored)."""
    timeout = settings.alert_delivery_timeout_seconds
    channels: list[Channel] = [WebhookChannel(url, timeout) for url in settings.alert_webhook_urls]
    if settings.alert_smtp_host and settings.alert_email_to:
        channels.append(
            EmailChannel(
                host=settings.alert_smtp_host,
                port=settings.alert_smtp_port,
                sender=settings.alert_email_from,
                recipients=list(settings.alert_email_to),
                starttls=settings.alert_smtp_starttls,
                username=settings.alert_smtp_username,
                password=settings.alert_smtp_password,
                timeout_seconds=timeout,
            )
        )
    return channels


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int = 0  # (alert, channel) notices delivered now
    failed: int = 0  # (alert, channel) notices that failed now (retried on a later call)


def deliver_pending(
    conn: psycopg.Connection, channels: Sequence[Channel], max_attempts: int = 5, limit: int = 100
) -> DeliveryReport:
    """Deliver every queued notice to the channels that lack it; failures are recorded, never raised.

    Each call is one attempt per notice; a notice whose channels all failed `max_attempts` times is given up
    (`last_delivery_error` says why). Rows are locked while delivering, so concurrent sensors never send the
    same notice twice.
    """
    delivered = failed = 0
    ids = {c.channel_id for c in channels}
    with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(
            f"""SELECT {_ALERT_COLUMNS}, notified_channels, resolution_notified_channels, delivery_attempts
                FROM ops.alerts WHERE delivery_pending ORDER BY alert_id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (limit,),
        )
        for row in cur.fetchall():
            notified = set(row.pop("notified_channels"))
            resolution_notified = set(row.pop("resolution_notified_channels"))
            attempts = row.pop("delivery_attempts")
            alert = Alert(**row)
            if alert.resolved_at is None:
                due = [c for c in channels if c.channel_id not in notified]
            else:
                due = [c for c in channels if c.channel_id in notified - resolution_notified]
            errors = []
            for channel in due:
                try:
                    channel.send(alert)
                except Exception as exc:  # a broken channel must not stop the others or the sensor
                    errors.append(f"{channel.channel_id}: {_describe(exc)}")
                    failed += 1
                    continue
                delivered += 1
                (resolution_notified if alert.resolved_at else notified).add(channel.channel_id)
            attempts = attempts + 1 if errors else 0
            # Channels removed from the settings since the alert was raised are not waited for.
            pending = bool(errors) and attempts < max_attempts and bool(ids)
            conn.execute(
                """UPDATE ops.alerts SET notified_channels = %s, resolution_notified_channels = %s,
                       delivery_pending = %s, delivery_attempts = %s,
                       last_delivery_at = CASE WHEN %s THEN now() ELSE last_delivery_at END,
                       last_delivery_error = %s
                   WHERE alert_id = %s""",
                (
                    sorted(notified),
                    sorted(resolution_notified),
                    pending,
                    attempts,
                    bool(due),
                    "; ".join(errors) or None,
                    alert.alert_id,
                ),
            )
    return DeliveryReport(delivered, failed)


def _describe(exc: Exception) -> str:
    # Exception texts of HTTP clients contain the URL, and webhook URLs carry their secret in the path.
    if isinstance(exc, DeliveryError | smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc}"[:300]
    return type(exc).__name__


# --- payloads -------------------------------------------------------------------------------------------


def headline(alert: Alert) -> str:
    if alert.resolved_at:
        return f"[RESOLVED] {alert.title}"
    return f"[{alert.severity.upper()}] {alert.title}"


def _facts(alert: Alert) -> list[tuple[str, str]]:
    facts = [("kind", alert.kind), ("severity", alert.severity), ("organization", alert.org_id or "platform")]
    if alert.asset_key:
        facts.append(("asset", alert.asset_key))
    if alert.partition:
        facts.append(("partition", alert.partition))
    facts += [
        ("first seen", alert.first_seen.isoformat()),
        ("last seen", alert.last_seen.isoformat()),
        ("occurrences", str(alert.occurrences)),
    ]
    if alert.resolved_at:
        facts.append(("resolved", alert.resolved_at.isoformat()))
    return facts


_SLACK_COLORS = {"info": "#439FE0", "warning": "#E8A317", "error": "#D62728", "critical": "#8B0000"}


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """Slack-compatible body (Slack, Mattermost and most chat webhooks render `text`/`blocks`) + `alert`."""
    text = headline(alert)
    facts = _facts(alert)
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": text[:150]}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts[:10]],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"OptiBid alert {alert.alert_id} · {alert.dedup_key}"}],
            },
        ],
        "attachments": [
            {
                "color": "#2CA02C" if alert.resolved_at else _SLACK_COLORS.get(alert.severity, "#D62728"),
                "fallback": text,
                "fields": [{"title": k, "value": v, "short": True} for k, v in facts],
            }
        ],
        "alert": alert.as_json(),
    }


def email_message(alert: Alert, sender: str, recipients: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"OptiBid {headline(alert)}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["X-OptiBid-Alert-Id"] = str(alert.alert_id)
    message["X-OptiBid-Alert-Status"] = alert.status
    body = [headline(alert), ""]
    body += [f"{k}: {v}" for k, v in _facts(alert)]
    body += [f"alert id: {alert.alert_id}", f"condition: {alert.dedup_key}"]
    body += ["", "detail:", json.dumps(alert.detail, indent=2, sort_keys=True, default=str)]
    if alert.resolution:
        body += ["", "resolution:", json.dumps(alert.resolution, indent=2, sort_keys=True, default=str)]
    message.set_content("\n".join(body) + "\n")
    return message
