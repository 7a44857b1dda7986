"""WS /api/v1/ws/dashboard: several KPIs on one connection, pushed by the real-time KPI writer
(`ingestion.cdc.realtime.MinuteKpiWriter`, what the CDC consumer runs), with the single-KPI stream's auth,
resume and backpressure rules."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.api.conftest import DAY0
from tests.api.test_ws import _publish, _Raw, _token
from tests.realtime.tick_rows import bronze_tick_rows

WS = "/api/v1/ws/dashboard"


def _url(token: str, *kpis: str, **extra: str) -> str:
    return f"{WS}?" + urlencode([*(("kpi", k) for k in kpis), *extra.items(), ("access_token", token)])


def _values(ws, wanted: int) -> dict[tuple[str, str], list[dict]]:
    """The next `wanted` kpi_values messages by (kpi, zone), heartbeats skipped."""
    out: dict[tuple[str, str], list[dict]] = {}
    while wanted:
        message = ws.receive_json()
        if message["type"] == "heartbeat":
            continue
        assert message["type"] == "kpi_values"
        out.setdefault((message["kpi_code"], message["zone"]), []).extend(message["values"])
        wanted -= 1
    return out


def test_several_kpis_on_one_connection_pushed_resumed_and_org_scoped(client, auth, api_database):
    from ingestion.cdc.realtime import MinuteKpiWriter

    token = _token(auth, "org_a", "viewer")
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    before_pnl = (DAY0 - timedelta(hours=1)).isoformat()
    streams = ("price_avg,PJM,minute", "price_avg,NP,minute", f"pnl,PJM,hour,{before_pnl}")
    with client.websocket_connect(_url(token, *streams)) as ws, MinuteKpiWriter(api_database) as writer:
        # The resumed org KPI comes first: org A's four values, never org B's.
        backlog = ws.receive_json()
        assert backlog["backlog"] is True and backlog["kpi_code"] == "pnl"
        assert [v["value"] for v in backlog["values"]] == [1000.0] * 4
        assert ws.receive_json()["type"] == "heartbeat"
        update = writer.apply(bronze_tick_rows({"PJM": [41.0, 42.0], "NP": [17.0]}, start, offset=0))
        assert update.changed == 3
        pushed = _values(ws, 2)
    assert [v["value"] for v in pushed[("price_avg", "PJM")]] == [41.0, 42.0]
    assert [v["value"] for v in pushed[("price_avg", "NP")]] == [17.0]
    # Reconnect with each stream's last period: only what came after it, per stream.
    first_pjm = pushed[("price_avg", "PJM")][0]["period_start"]
    last_np = pushed[("price_avg", "NP")][-1]["period_start"]
    resume = (f"price_avg,PJM,minute,{first_pjm}", f"price_avg,NP,minute,{last_np}")
    with client.websocket_connect(_url(token, *resume)) as ws:
        message = ws.receive_json()
        assert message["backlog"] is True and message["zone"] == "PJM"
        assert [v["value"] for v in message["values"]] == [42.0]
        assert ws.receive_json()["type"] == "heartbeat"  # nothing after NP's last period


def test_dashboard_rejects_bad_credentials_and_streams(client, auth):
    token = _token(auth)
    cases = [
        (f"{WS}?kpi=price_avg,PJM", 4401),
        (_url("not-a-token", "price_avg,PJM"), 4401),
        (_url(token), 4400),  # no kpi
        (_url(token, "price_avg,PJM,week"), 4400),
        (_url(token, "price_avg,PJM';--"), 4400),
        (_url(token, "price_avg,PJM,hour,yesterday"), 4400),
        (_url(token, "price_avg"), 4400),
        (_url(token, *(f"k{i},PJM" for i in range(21))), 4400),  # at most 20 streams
        (_url(token, "price_avg,PJM", since="soon"), 4400),
    ]
    for url, code in cases:
        with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect(url) as ws:
            ws.receive_json()
        assert exc.value.code == code, url


def test_a_slow_dashboard_is_dropped_not_buffered(api_settings, auth, api_database):
    """One bounded queue per connection, whichever of its KPIs fills it: the slow dashboard is closed,
    the fast one (same KPIs) keeps both its subscriptions."""
    import uvicorn

    from infra import db
    from infra.processes import free_port
    from infra.signals import notify_kpi_update
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
        path = _url(_token(auth), "dash_kpi,NP,minute", "price_avg,NP,minute")
        fast = _Raw(port, path)
        slow = _Raw(port, path, rcvbuf=4096)
        metrics = app.state.api.metrics
        start = DAY0 + timedelta(days=1)
        _publish(api_database, "dash_kpi", None, start, 1440, 1.0)  # a day of minute values (~100 kB a push)
        for _ in range(200):
            with db.connect(api_database) as conn:
                notify_kpi_update(conn, "dash_kpi", "minute", "NP", start, start + timedelta(days=1))
            fast.drain()
            if metrics.ws_dropped._value.get() >= 1:
                break
            time.sleep(0.02)
        assert metrics.ws_dropped._value.get() == 1
        assert app.state.api.hub.client_count == 2  # the fast dashboard's two subscriptions
        fast.close()
        slow.close()
    finally:
        server.should_exit = True
        thread.join(10)
