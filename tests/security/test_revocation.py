"""Revocation reaches refresh, restarts and open WebSockets (OWASP API2): a revoked session stays revoked."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.api.conftest import PASSWORD
from tests.security.conftest import V1, login, make_app


def _family_of(database_url: str, refresh_token: str) -> str:
    from infra import db
    from serving_api import security

    with db.connect(database_url) as conn:
        return conn.execute(
            "SELECT family_id FROM ops.refresh_tokens WHERE token_hash = %s", (security.token_digest(refresh_token),)
        ).fetchone()[0]


def test_refresh_refuses_a_token_of_a_revoked_family(client, security_settings):
    from infra import db

    first = login(client, "trader@org_b.test", PASSWORD).json()
    second = client.post(f"{V1}/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    assert client.post(f"{V1}/auth/revoke", json={"refresh_token": second["refresh_token"]}).status_code == 200
    family = _family_of(security_settings.database_url, second["refresh_token"])
    # A token rotated in concurrently with the revocation's UPDATE: its own row is not marked revoked.
    with db.connect(security_settings.database_url) as conn:
        conn.execute(
            "UPDATE ops.refresh_tokens SET revoked_at = NULL WHERE family_id = %s AND used_at IS NULL", (family,)
        )
    resp = client.post(f"{V1}/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert resp.status_code == 401, resp.text


def test_revocations_older_than_an_hour_survive_a_restart(client, security_settings):
    from infra import db

    tokens = login(client, "viewer@org_b.test", PASSWORD).json()
    assert client.post(f"{V1}/auth/revoke", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    family = _family_of(security_settings.database_url, tokens["refresh_token"])
    with db.connect(security_settings.database_url) as conn:
        conn.execute(
            "UPDATE ops.refresh_tokens SET revoked_at = now() - interval '2 hours' WHERE family_id = %s", (family,)
        )
    with TestClient(make_app(security_settings)) as restarted:
        state = restarted.app.state.api
        assert state.hub.connected  # so the fast, memory-only check is what decides
        resp = restarted.get(f"{V1}/zones", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status_code == 401 and resp.json()["code"] == "token_revoked"


def _closed_within(ws, seconds: float) -> tuple[int, float]:
    started = time.perf_counter()
    with pytest.raises(WebSocketDisconnect) as closed:
        while time.perf_counter() - started < seconds + 5:
            ws.receive_json()
    return closed.value.code, time.perf_counter() - started


def test_websocket_closes_within_5s_after_its_api_key_is_revoked(client, auth):
    created = client.post(f"{V1}/api-keys", json={"name": "ws", "role": "viewer"}, headers=auth()).json()
    url = f"{V1}/ws/kpis/avg_price?zone=PJM&grain=hour&api_key={created['api_key']}"
    with client.websocket_connect(url) as ws:
        assert ws.receive_json()["type"] == "heartbeat"
        assert client.delete(f"{V1}/api-keys/{created['key_id']}", headers=auth()).status_code in (200, 204)
        code, elapsed = _closed_within(ws, 5)
    assert code == 4401 and elapsed <= 5


def test_websocket_closes_when_its_token_expires(client):
    state = client.app.state.api
    # `exp` is whole seconds: `time.time() + 2` could leave the token one second, too little on a busy machine
    # to connect and receive the first heartbeat before it expires.
    token, _ = state.token_keys.issue(
        user_id="u", org_id="org_a", role="viewer", family_id="f-expiring", not_after=int(time.time()) + 3
    )
    with client.websocket_connect(f"{V1}/ws/kpis/avg_price?zone=PJM&grain=hour&access_token={token}") as ws:
        assert ws.receive_json()["type"] == "heartbeat"
        code, elapsed = _closed_within(ws, 5)
    assert code == 4401 and elapsed <= 5
