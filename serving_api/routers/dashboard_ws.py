"""WS /api/v1/ws/dashboard: several KPIs on one connection, for a dashboard that would otherwise open one
WebSocket per tile. The rules are those of the single-KPI stream (`serving_api.routers.ws`): the same
credentials and re-checks, the same messages (each `kpi_values` message names its KPI, zone and grain), the
same close codes, and ONE bounded queue for the whole connection, so a client that falls behind on any of
its KPIs is closed with 1013 rather than buffered.

Subscribe with one `kpi` query parameter per stream: `kpi=<code>,<zone>[,<grain>[,<since>]]` (grain
`minute`, `hour` or `day`, default `hour`; `since` an ISO 8601 time, the last period the client has of that
stream). `since=<time>` applies to every stream that names none. After a 1013 close, reconnect with each
stream's last `period_start` as its `since`: the backlog of each comes first, one message per stream with
`"backlog": true`, then live values.
"""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import APIRouter, WebSocket

from serving_api.models import CODE_PATTERN, ZONE_PATTERN
from serving_api.routers.ws import GRAINS, authorized, credentials_of, parse_since, refuse, send_loop, supervise

router = APIRouter(tags=["streaming"])
StreamKey = tuple[str, str, str]  # kpi_code, zone, grain


@router.websocket("/ws/dashboard")
async def dashboard_stream(websocket: WebSocket) -> None:
    state = websocket.app.state.api
    token, api_key = credentials_of(websocket)
    principal = await authorized(websocket, state, token, api_key)
    if principal is None:
        return
    try:
        streams = parse_streams(
            websocket.query_params.getlist("kpi"),
            parse_since(websocket.query_params.get("since")),
            state.options.ws_dashboard_max_streams,
        )
    except ValueError as exc:
        await refuse(websocket, 4400, str(exc))
        return

    await websocket.accept()
    # Subscribe before reading the backlogs so nothing committed in between is missed.
    subs = state.hub.subscribe_many([key for key, _ in streams], principal.org_id)
    sender = send_loop(websocket, state, subs[0], streams, principal.org_id)
    await supervise(websocket, state, subs, sender, token, api_key)


def parse_streams(
    specs: list[str], default_since: datetime | None, max_streams: int
) -> list[tuple[StreamKey, datetime | None]]:
    """The distinct streams of the `kpi` parameters, in order; ValueError (closed with 4400) naming the
    first bad one."""
    if not specs:
        raise ValueError("no kpi: pass kpi=<code>,<zone>[,<grain>[,<since>]] once per stream")
    streams: dict[StreamKey, datetime | None] = {}
    for spec in specs:
        parts = spec.split(",")
        if not 2 <= len(parts) <= 4:
            raise ValueError(f"kpi {spec[:40]!r}: expected <code>,<zone>[,<grain>[,<since>]]")
        code, zone = parts[0], parts[1]
        grain = parts[2] if len(parts) > 2 and parts[2] else "hour"
        if not re.fullmatch(CODE_PATTERN, code) or not re.fullmatch(ZONE_PATTERN, zone) or grain not in GRAINS:
            raise ValueError(f"kpi {spec[:40]!r}: bad code, zone or grain")
        try:
            since = parse_since(parts[3]) if len(parts) > 3 else default_since
        except ValueError:
            raise ValueError(f"kpi {spec[:40]!r}: since is not an ISO 8601 time") from None
        streams[(code, zone, grain)] = since
    if len(streams) > max_streams:
        raise ValueError(f"{len(streams)} kpi streams: at most {max_streams} per connection")
    return list(streams.items())
