"""Fixtures of the alerting tests: a real SMTP server (aiosmtpd) and a real HTTP webhook receiver on
127.0.0.1, settings that point the alert channels at them, and a Dagster instance for real runs."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from aiosmtpd.controller import Controller


class SmtpInbox:
    """aiosmtpd handler keeping every received message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's hook name
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def about(self, needle: str) -> list[EmailMessage]:
        return [m for m in self.messages if needle in m.get_content() or needle in str(m["Subject"])]


class WebhookReceiver:
    """A local HTTP server recording JSON POST bodies; `fail_next` answers that many requests with 500."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's hook name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/optibid"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def about(self, needle: str) -> list[dict]:
        return [b for b in self.bodies if needle in json.dumps(b)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[SmtpInbox, int]]:
    inbox = SmtpInbox()
    port = _free_port()  # aiosmtpd's start-up probe connects to the given port, so it cannot be 0
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def alert_channels(database_url, smtp_inbox, webhook, monkeypatch) -> tuple[WebhookReceiver, SmtpInbox]:
    """The settings every sensor reads now deliver to the local receivers."""
    from infra.settings import get_settings

    inbox, port = smtp_inbox
    monkeypatch.setenv("OPTIBID_ALERT_WEBHOOK_URLS", json.dumps([webhook.url]))
    monkeypatch.setenv("OPTIBID_ALERT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("OPTIBID_ALERT_SMTP_PORT", str(port))
    monkeypatch.setenv("OPTIBID_ALERT_EMAIL_FROM", "optibid-alerts@example.test")
    monkeypatch.setenv("OPTIBID_ALERT_EMAIL_TO", json.dumps(["oncall@example.test"]))
    monkeypatch.setenv("OPTIBID_ALERT_DELIVERY_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()
    _drain_foreign_pending(database_url)
    yield webhook, inbox
    get_settings.cache_clear()


def _drain_foreign_pending(database_url: str) -> None:
    # Alerts other tests of the session left queued are not this test's deliveries.
    from infra import db

    with db.connect(database_url) as conn:
        conn.execute("UPDATE ops.alerts SET delivery_pending = false WHERE delivery_pending")


@pytest.fixture
def warehouse(database_url):
    from assets.shared.resources import WarehouseResource

    return WarehouseResource(database_url=database_url)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst
