"""WS /api/v1/ws/kpis/{code}: live KPI values (see serving_api.streaming for the design), and the rules every
KPI stream of the API shares (authentication, credential re-checks, closing), which
`serving_api.routers.dashboard_ws` applies to several KPIs on one connection.

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
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from serving_api import repository
from serving_api.deps import Principal, principal_from_credentials
from serving_api.errors import ApiError
from serving_api.models import CODE_PATTERN, ZONE_PATTERN
from serving_api.org_scope import set_org_scope
from serving_api.security import Permission, api_key_prefix_of
from serving_api.streaming import Subscriber, kpi_message

log = logging.getLogger(__name__)
router = APIRouter(tags=["streaming"])
GRAINS = ("minute", "hour", "day")


@router.websocket("/ws/kpis/{code}")
async def kpi_stream(websocket: WebSocket, code: str) -> None:
    state = websocket.app.state.api
    q = websocket.query_params
    zone, grain, since_raw = q.get("zone", ""), q.get("grain", "hour"), q.get("since")
    token, api_key = credentials_of(websocket)
    principal = await authorized(websocket, state, token, api_key)
    if principal is None:
        return
    try:
        if not re.fullmatch(CODE_PATTERN, code) or not re.fullmatch(ZONE_PATTERN, zone):
            raise ValueError("bad code or zone")
        if grain not in GRAINS:
            raise ValueError("bad grain")
        since = parse_since(since_raw)
    except ValueError:
        await refuse(websocket, 4400, "invalid parameters")
        return

    await websocket.accept()
    # Subscribe before reading the backlog so nothing committed in between is missed.
    sub = state.hub.subscribe(code, zone, grain, principal.org_id)
    sender = send_loop(websocket, state, sub, [((code, zone, grain), since)], principal.org_id)
    await supervise(websocket, state, [sub], sender, token, api_key)


def credentials_of(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(access token, API key) from the query string or the usual headers."""
    q = websocket.query_params
    bearer = websocket.headers.get("authorization", "")
    token = q.get("access_token") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
    return token, q.get("api_key") or websocket.headers.get("x-api-key")


async def authorized(websocket: WebSocket, state, token: str | None, api_key: str | None) -> Principal | None:
    """The caller if it may read KPIs; otherwise the socket is closed (4401 / 4403) and None returned."""
    try:
        principal = await principal_from_credentials(state, token, api_key)
    except ApiError as exc:
        await refuse(websocket, 4401, exc.code)
        return None
    if not principal.can(Permission.market_read):
        await refuse(websocket, 4403, "forbidden")
        return None
    return principal


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with `code` so that the client sees it: accepted first, because a close before the handshake
    completes reaches a real client as a bare HTTP 403 (the ASGI server's answer), whatever the code."""
    await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


def parse_since(raw: str | None) -> datetime | None:
    """A resume point (ISO 8601, UTC when naive); ValueError when malformed."""
    if not raw:
        return None
    since = datetime.fromisoformat(raw)
    return since.replace(tzinfo=UTC) if since.tzinfo is None else since


async def supervise(
    websocket: WebSocket,
    state,
    subs: list[Subscriber],
    sender: Coroutine[Any, Any, None],
    token: str | None,
    api_key: str | None,
) -> None:
    """Run an accepted stream until the client leaves, falls behind (1013) or loses its credentials (4401);
    the subscriptions `subs` share one drop flag and are all removed at the end."""
    state.metrics.ws_clients.inc()
    sending = asyncio.create_task(sender)
    receiver = asyncio.create_task(_drain_client(websocket))
    dropped = asyncio.create_task(subs[0].dropped.wait())
    revoked = asyncio.create_task(_credentials_lost(state, token, api_key))
    try:
        done, _ = await asyncio.wait({sending, receiver, dropped, revoked}, return_when=asyncio.FIRST_COMPLETED)
        if revoked in done and not revoked.cancelled() and revoked.exception() is None:
            sending.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=4401, reason=revoked.result()), 1)
        if sending in done and not sending.cancelled() and sending.exception() is not None:
            log.warning("WebSocket sender failed", exc_info=sending.exception())
        if dropped in done:
            sending.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=1013, reason="client too slow; resume with since"), 1)
    finally:
        for task in (sending, receiver, dropped, revoked):
            task.cancel()
        for sub in subs:
            state.hub.unsubscribe(sub)
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


async def send_loop(
    websocket: WebSocket,
    state,
    sub: Subscriber,
    streams: list[tuple[tuple[str, str, str], datetime | None]],
    org_id: str,
) -> None:
    """The backlog of every stream resumed with a `since` (one message each, `"backlog": true`), then the
    live messages of the client's queue, with a heartbeat whenever none came for `ws_heartbeat_seconds`."""
    resumed = [(key, since) for key, since in streams if since is not None]
    if resumed:
        async with state.pool.connection() as conn, conn.transaction():
            await set_org_scope(conn, org_id)
            backlogs = [
                # `since` is the last period the client has: resume strictly after it.
                (key, await repository.kpi_values_between(conn, *key, since + timedelta(microseconds=1), None))
                for key, since in resumed
            ]
        for key, rows in backlogs:
            if rows:
                await websocket.send_json({**kpi_message(key, rows), "backlog": True})
    heartbeat = state.options.ws_heartbeat_seconds
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            try:
                message = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except TimeoutError:
                message = {"type": "heartbeat", "at": datetime.now(UTC).isoformat()}
            await websocket.send_json(message)
