"""WS /api/v1/ws/kpis/{code}: live KPI values (see serving_api.streaming for the design).

Authenticate with `?access_token=` / `?api_key=` (browsers cannot set headers on WebSockets) or the usual
headers. Messages: `{"type": "kpi_values", ...}` with a list of values, `{"type": "heartbeat", "at": ...}`.
Close codes: 4401 unauthenticated (also when the token expires or its session, or the API key, is revoked
while streaming: credentials are re-checked every `ws_auth_recheck_seconds`), 4403 forbidden, 4400 bad
parameters, 1013 dropped for falling behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from serving_api import repository
from serving_api.deps import principal_from_credentials
from serving_api.errors import ApiError
from serving_api.models import CODE_PATTERN, ZONE_PATTERN
from serving_api.org_scope import set_org_scope
from serving_api.security import Permission, api_key_prefix_of
from serving_api.streaming import kpi_message

log = logging.getLogger(__name__)
router = APIRouter(tags=["streaming"])


@router.websocket("/ws/kpis/{code}")
async def kpi_stream(websocket: WebSocket, code: str) -> None:
    state = websocket.app.state.api
    q = websocket.query_params
    zone, grain, since_raw = q.get("zone", ""), q.get("grain", "hour"), q.get("since")
    bearer = websocket.headers.get("authorization", "")
    token = q.get("access_token") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
    api_key = q.get("api_key") or websocket.headers.get("x-api-key")
    try:
        principal = await principal_from_credentials(state, token, api_key)
    except ApiError as exc:
        await websocket.close(code=4401, reason=exc.code)
        return
    if not principal.can(Permission.market_read):
        await websocket.close(code=4403, reason="forbidden")
        return
    try:
        if not re.fullmatch(CODE_PATTERN, code) or not re.fullmatch(ZONE_PATTERN, zone):
            raise ValueError("bad code or zone")
        if grain not in ("minute", "hour", "day"):
            raise ValueError("bad grain")
        since = datetime.fromisoformat(since_raw) if since_raw else None
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    except ValueError:
        await websocket.close(code=4400, reason="invalid parameters")
        return

    await websocket.accept()
    hub = state.hub
    # Subscribe before reading the backlog so nothing committed in between is missed.
    sub = hub.subscribe(code, zone, grain, principal.org_id)
    state.metrics.ws_clients.inc()
    sender = asyncio.create_task(
        _send_loop(websocket, state, sub, code, zone, grain, principal.org_id, since)
    )
    receiver = asyncio.create_task(_drain_client(websocket))
    dropped = asyncio.create_task(sub.dropped.wait())
    revoked = asyncio.create_task(_credentials_lost(state, token, api_key))
    try:
        done, _ = await asyncio.wait(
            {sender, receiver, dropped, revoked}, return_when=asyncio.FIRST_COMPLETED
        )
        if revoked in done and not revoked.cancelled() and revoked.exception() is None:
            sender.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=4401, reason=revoked.result()), 1)
        if sender in done and not sender.cancelled() and sender.exception() is not None:
            log.warning("WebSocket sender failed", exc_info=sender.exception())
        if dropped in done:
            sender.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(code=1013, reason="client too slow; resume with since"), 1
                )
    finally:
        for task in (sender, receiver, dropped, revoked):
            task.cancel()
        hub.unsubscribe(sub)
        state.metrics.ws_clients.dec()


async def _credentials_lost(state, token: str | None, api_key: str | None) -> str:
    """Returns (the close reason) once the stream's credentials stop being valid: expiry or revocation.

    Revocations reach memory through the listener (`revoked_families`, evicted API-key rows); while it is
    down, API keys are looked up afresh so the bound holds without it.
    """
    interval = state.options.ws_auth_recheck_seconds
    while True:
        await asyncio.sleep(interval)
        if api_key and (state.hub is None or not state.hub.connected):
            prefix = api_key_prefix_of(api_key)
            if prefix:
                state.api_keys.pop(prefix, None)
        try:
            await principal_from_credentials(state, token, api_key)
        except ApiError as exc:
            return exc.code


async def _drain_client(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()


async def _send_loop(websocket, state, sub, code, zone, grain, org_id, since) -> None:
    if since is not None:
        async with state.pool.connection() as conn, conn.transaction():
            await set_org_scope(conn, org_id)
            # `since` is the last period the client has: resume strictly after it.
            rows = await repository.kpi_values_between(
                conn, code, zone, grain, since + timedelta(microseconds=1), None
            )
        if rows:
            await websocket.send_json({**kpi_message((code, zone, grain), rows), "backlog": True})
    heartbeat = state.options.ws_heartbeat_seconds
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            try:
                message = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except TimeoutError:
                message = {"type": "heartbeat", "at": datetime.now(UTC).isoformat()}
            await websocket.send_json(message)
