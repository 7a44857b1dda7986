"""Live KPI values over WebSocket, fanned out from ONE shared Postgres listener.

Why LISTEN/NOTIFY rather than polling: gold assets call `notify_kpi_update` in the transaction that writes
`gold.kpi_values`, so Postgres delivers the notification exactly at commit (never before the rows are
visible, never for a rolled-back write) with sub-second latency, and one idle connection serves every
client; polling would trade latency against a query per interval per key. The same listener follows
`ops.table_versions` bumps (cache keys) and refresh-family revocations (access tokens), and on every
(re)connect it reloads both, because notifications sent while it was away are lost.

Per client: a bounded queue. The hub never awaits a client: when a client's queue is full it is dropped
(closed with 1013 "try again later") instead of buffering without limit; it reconnects with
`?since=<last period_start>` and receives the backlog from the table before live values resume. The hub
reads pushed rows once per organization among the subscribers, under that organization's RLS scope.

What belongs here: the shared listener (`Hub`) and the KPI message format. What does not: the WebSocket
endpoint and its authentication (`serving_api/routers/ws.py`), and the channels' names and the pipeline side
that sends on them (`infra/signals.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg

from infra.signals import AUTH_CHANNEL, KPI_CHANNEL, TABLE_VERSION_CHANNEL
from serving_api import repository
from serving_api.org_scope import assume_api_role, set_org_scope
from serving_api.security import ACCESS_TOKEN_SECONDS
from serving_api.state import ApiState

log = logging.getLogger(__name__)
# libpq TCP keepalives: the kernel notices a dead peer even while no query is in flight.
LISTENER_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


@dataclass(eq=False)
class Subscriber:
    key: tuple[str, str, str]  # kpi_code, zone, grain
    org_id: str
    queue: asyncio.Queue
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.connected = False
        self._subscribers: dict[tuple[str, str, str], set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="optibid-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.state.api_database_url, autocommit=True, **LISTENER_KEEPALIVES
                ) as conn:
                    await assume_api_role(conn)
                    for channel in (KPI_CHANNEL, TABLE_VERSION_CHANNEL, AUTH_CHANNEL):
                        await conn.execute(f"LISTEN {channel}")
                    await self._reload(conn)
                    self.connected = True
                    self._ready.set()
                    backoff = 0.5
                    await self._listen(conn)
            except asyncio.CancelledError:
                self.connected = False
                raise
            except Exception:
                log.warning("listener connection lost; reconnecting", exc_info=True)
            self.connected = False
            if self.state.cache:
                self.state.cache.enabled = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        """Dispatch notifications; between them, prove the connection alive with a bounded round trip.

        A half-open TCP connection (server gone, no RST) would otherwise look like a quiet channel forever,
        with revocations silently missed and `connected` still true. The probe fails within
        `listener_keepalive_seconds` (plus its own timeout), which drops to the reconnect path: `connected`
        goes false (the cache is bypassed and tokens are checked in the database) until a reload.
        """
        interval = self.state.options.listener_keepalive_seconds
        while True:
            async for note in conn.notifies(timeout=interval):
                await self._dispatch(note.channel, note.payload)
            await asyncio.wait_for(conn.execute("SELECT 1"), interval)

    async def _reload(self, conn: psycopg.AsyncConnection) -> None:
        versions = await (
            await conn.execute("SELECT table_name, market_date, version FROM ops.table_versions")
        ).fetchall()
        # Every revoked family an access token could still be alive for: access tokens never outlive the
        # family's newest token's issue time plus their lifetime (older revocations cannot matter).
        families = await (
            await conn.execute("SELECT api_auth.revoked_families(%s)", (ACCESS_TOKEN_SECONDS + 60,))
        ).fetchall()
        self.state.revoked_families.update(f for (f,) in families)
        if self.state.cache:
            self.state.cache.versions.replace_all([(t, d, int(v)) for t, d, v in versions])
            self.state.cache.clear()
            self.state.cache.enabled = True

    async def _dispatch(self, channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            if channel == TABLE_VERSION_CHANNEL and self.state.cache:
                self.state.cache.versions.set(
                    data["table"], date.fromisoformat(data["market_date"]), int(data["version"])
                )
            elif channel == AUTH_CHANNEL:
                if data.get("family_id"):
                    self.state.revoked_families.add(data["family_id"])
                if data.get("api_key_prefix"):
                    self.state.api_keys.pop(data["api_key_prefix"], None)
            elif channel == KPI_CHANNEL:
                await self._fan_out(data)
        except Exception:
            log.warning("bad notification on %s", channel, exc_info=True)

    # --- KPI fan-out ----------------------------------------------------------------------------
    def subscribe(self, code: str, zone: str, grain: str, org_id: str) -> Subscriber:
        sub = Subscriber((code, zone, grain), org_id, asyncio.Queue(maxsize=self.state.options.ws_queue_size))
        self._subscribers[sub.key].add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                self._subscribers.pop(sub.key, None)

    @property
    def client_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def _fan_out(self, data: dict[str, Any]) -> None:
        key = (data["kpi_code"], data["zone"], data["grain"])
        subs = list(self._subscribers.get(key, ()))
        if not subs:
            return
        by_org: dict[str, list[Subscriber]] = defaultdict(list)
        for sub in subs:
            if data.get("org_id") in (None, sub.org_id):
                by_org[sub.org_id].append(sub)
        start = datetime.fromisoformat(data["period_from"])
        end = datetime.fromisoformat(data["period_to"])
        assert self.state.pool is not None
        for org_id, org_subs in by_org.items():
            async with self.state.pool.connection() as conn, conn.transaction():
                await set_org_scope(conn, org_id)
                rows = await repository.kpi_values_between(conn, *key, start, end)
            if not rows:
                continue
            message = kpi_message(key, rows)
            for sub in org_subs:
                self.offer(sub, message)

    def offer(self, sub: Subscriber, message: dict[str, Any]) -> None:
        """Queue a message for one client without waiting; a full queue drops the client."""
        if sub.dropped.is_set():
            return
        try:
            sub.queue.put_nowait(message)
            if self.state.metrics:
                self.state.metrics.ws_messages.inc()
        except asyncio.QueueFull:
            sub.dropped.set()
            self.unsubscribe(sub)
            if self.state.metrics:
                self.state.metrics.ws_dropped.inc()


def kpi_message(key: tuple[str, str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    code, zone, grain = key
    return {
        "type": "kpi_values",
        "kpi_code": code,
        "zone": zone,
        "grain": grain,
        "values": [
            {"period_start": r["period_start"], "market_date": r["market_date"], "value": r["value"]}
            for r in rows
        ],
    }
