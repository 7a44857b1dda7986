"""KPI WebSocket: live push on NOTIFY, heartbeat, resume with ?since=, org scoping, slow clients dropped."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from urllib.parse import quote

import pytest

from tests.api.conftest import DAY0


def _publish(database_url: str, code: str, org_id: str | None, start, n: int, value: float) -> None:
    from infra import db
    from infra.signals import notify_kpi_update

    with db.connect(database_url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO gold.kpi_values VALUES (%s, 'minute', 'NP', %s, %s, %s, %s)",
                [(code, org_id, start + timedelta(minutes=i), start.date(), value) for i in range(n)],
            )
        notify_kpi_update(conn, code, "minute", "NP", start, start + timedelta(minutes=n - 1), org_id)


def _token(auth, org="org_a", role="viewer") -> str:
    return auth(org, role)["Authorization"].split(" ", 1)[1]


def test_receive_heartbeat_resume_and_org_scope(client, auth, api_database):
    url = f"/api/v1/ws/kpis/ws_kpi?zone=NP&grain=minute&access_token={_token(auth)}"
    start = DAY0 + timedelta(days=1)
    with client.websocket_connect(url) as ws:
        assert ws.receive_json()["type"] == "heartbeat"  # heartbeat every 0.5 s in tests
        _publish(api_database, "ws_kpi", "org_b", start, 2, 99.0)  # other org: must not arrive
        _publish(api_database, "ws_kpi", None, start + timedelta(hours=1), 3, 7.0)
        message = ws.receive_json()
        while message["type"] == "heartbeat":
            message = ws.receive_json()
        assert message["type"] == "kpi_values"
        assert [v["value"] for v in message["values"]] == [7.0, 7.0, 7.0]
        last = message["values"][1]["period_start"]
    # reconnect with the last period seen: the remainder comes from the table, then live values again
    with client.websocket_connect(f"{url}&since={quote(last)}") as ws:
        backlog = ws.receive_json()
        assert backlog["backlog"] is True and len(backlog["values"]) == 1
        assert backlog["values"][0]["period_start"] > last


def test_websocket_rejects_bad_credentials_and_params(client, auth):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect("/api/v1/ws/kpis/x?zone=NP"):
        pass
    assert exc.value.code == 4401
    bad = f"/api/v1/ws/kpis/x?zone=NP'--&access_token={_token(auth)}"
    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect(bad):
        pass
    assert exc.value.code == 4400


def test_slow_client_is_dropped_not_buffered(api_settings, auth, api_database):
    """A client that never reads fills its TCP window; its bounded queue overflows and it is closed."""
    import uvicorn

    from infra.services import free_port
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(api_settings, ApiOptions(ws_queue_size=2, ws_heartbeat_seconds=60))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        fast = _Raw(port, f"/api/v1/ws/kpis/slow_kpi?zone=NP&grain=minute&access_token={_token(auth)}")
        slow = _Raw(
            port, f"/api/v1/ws/kpis/slow_kpi?zone=NP&grain=minute&access_token={_token(auth)}", rcvbuf=4096
        )
        hub = app.state.api.hub
        metrics = app.state.api.metrics
        start = DAY0 + timedelta(days=1)
        for i in range(200):  # each notification pushes a day of minute values (~100 kB)
            _publish(
                api_database, "slow_kpi", None, start + timedelta(days=i % 2), 1440 if i == 0 else 0, 1.0
            )
            if i:
                from infra import db
                from infra.signals import notify_kpi_update

                with db.connect(api_database) as conn:
                    notify_kpi_update(conn, "slow_kpi", "minute", "NP", start, start + timedelta(days=1))
            fast.drain()
            if metrics.ws_dropped._value.get() >= 1:
                break
            time.sleep(0.02)
        assert metrics.ws_dropped._value.get() == 1
        assert hub.client_count == 1  # the fast reader is still subscribed
        fast.close()
        slow.close()
    finally:
        server.should_exit = True
        thread.join(10)


class _Raw:
    """A minimal WebSocket client on a raw socket, so the test controls whether it reads."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head, head
        self.sock.setblocking(False)

    def drain(self) -> None:
        try:
            while self.sock.recv(1 << 20):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()
