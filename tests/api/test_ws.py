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
    """Rows of a KPI and their NOTIFY, for the hub's queueing test only (see the slow-client test): the
    pipeline's own signalling is exercised end to end by the gold-run test above it."""
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


@pytest.fixture(scope="module")
def pipeline(database_url, settings, tmp_path_factory):
    """(warehouse URL, API client) on a warehouse whose gold comes from Dagster materializations."""
    from tests.gold.pipeline import pipeline_api, pipeline_warehouse

    url = pipeline_warehouse(database_url)
    with pipeline_api(settings, url, tmp_path_factory.mktemp("pipeline_home")) as client:
        yield url, client


def _next_values(ws) -> dict:
    message = ws.receive_json()
    while message["type"] == "heartbeat":
        message = ws.receive_json()
    return message


def test_kpis_of_a_gold_run_are_pushed_resumed_and_org_scoped(pipeline):
    """A gold partition run of kpi_values (through Dagster) pushes the day's KPI values to subscribers of
    the KPI's organization only; a reconnect with ?since= gets the remainder from the table."""
    from tests.gold.pipeline import KPI_MODELS, bearer, day_window, materialize_gold

    url, client = pipeline
    acme = bearer(client, "acme", "viewer")["Authorization"].split(" ", 1)[1]
    volt = bearer(client, "voltindia", "viewer")["Authorization"].split(" ", 1)[1]
    public = f"/api/v1/ws/kpis/price_avg?zone=PJM&grain=hour&access_token={acme}"
    with (
        client.websocket_connect(public) as ws,
        client.websocket_connect(f"/api/v1/ws/kpis/revenue?zone=PJM&grain=hour&access_token={acme}") as own,
        client.websocket_connect(f"/api/v1/ws/kpis/revenue?zone=PJM&grain=hour&access_token={volt}") as other,
    ):
        for stream in (ws, own, other):
            assert stream.receive_json()["type"] == "heartbeat"  # heartbeat every 0.5 s in tests
        assert materialize_gold(url, KPI_MODELS).success
        message = _next_values(ws)
        assert message["type"] == "kpi_values"
        served = client.get(
            "/api/v1/kpis/price_avg",
            params={**day_window(), "zone": "PJM", "grain": "hour", "limit": 100},
            headers={"Authorization": f"Bearer {acme}"},
        ).json()["data"]
        assert [v["value"] for v in message["values"]] == [r["value"] for r in served]
        assert len(message["values"]) == 24
        revenue = _next_values(own)
        assert revenue["type"] == "kpi_values" and revenue["values"]
        # acme's revenue never reaches voltindia's subscriber: heartbeats only
        assert all(other.receive_json()["type"] == "heartbeat" for _ in range(4))
        last = message["values"][1]["period_start"]
    # reconnect with the last period seen: the remainder comes from the table
    with client.websocket_connect(f"{public}&since={quote(last)}") as ws:
        backlog = ws.receive_json()
        assert backlog["backlog"] is True and len(backlog["values"]) == 22
        assert all(v["period_start"] > last for v in backlog["values"])


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
    """A client that never reads fills its TCP window; its bounded queue overflows and it is closed.

    This tests the hub's queueing, not the pipeline seam: it needs hundreds of notifications in seconds,
    so it writes rows and issues their NOTIFY itself (the gold-run test covers the pipeline's own)."""
    import uvicorn

    from infra.processes import free_port
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
