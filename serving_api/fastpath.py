"""The ASGI fast path: cache hits of GET reads answered before FastAPI routing, dependencies and middleware.

Why it exists: a cached price or KPI page is a few kB of bytes already in memory, yet the full stack spends
most of a request's CPU on routing, dependency injection (query-parameter models, a thread-pool hop for
sync dependencies) and six middleware layers; at 200 busy connections that caps one worker well below the
throughput target (see benchmarks/README_api.md for the profile).

What it may answer: only what the route itself would answer from the cache — 200 with the stored bytes and
the same headers (`X-Cache: hit`) and metrics (latency by route template, cache hits) — for the same caller
and the same request target (organization, path, raw query string). The cached entry remembers the
permission its route required, and the request was fully validated when the entry was stored, so the same
target needs no re-validation. Everything else falls through to the full app untouched, which then
produces the answer (every error shape included) itself: credentials not provable from memory (unknown or
wrong API key, a key not looked up within `api_key_cache_seconds`, an invalid, expired or revoked token,
the listener down), a role without the permission, a miss or an invalidated partition, an exhausted
rate-limit bucket, requests with an `Origin` header (CORS), and any method but GET. The decision awaits
nothing but, at most once a minute per user session and process, the record of that session's use (which
ends a session past its idle or absolute limit, `deps.touch_session`); the rate-limit token is taken last,
only when this path answers, so a request that falls through is never charged twice.
"""

from __future__ import annotations

import time

import psycopg
from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import ASGIApp, Receive, Scope, Send

from serving_api.cache import CachedResponse, request_target
from serving_api.deps import cached_principal, session_touch_due, touch_session
from serving_api.errors import ApiError
from serving_api.state import ApiState


class CachedReadFastPath:
    """Outermost user middleware of the app; `state` is the app's ApiState."""

    def __init__(self, app: ASGIApp, state: ApiState, prefix: str) -> None:
        self.app = app
        self.state = state
        self.prefix = prefix
        self._latency: dict[str, object] = {}  # route template → its labelled histogram child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            start = time.perf_counter()
            entry = await self._servable(scope)
            if entry is not None:
                body = entry.body
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        # As starlette's Response(body, media_type="application/json", headers={"X-Cache": "hit"}).
                        "headers": [
                            (b"x-cache", b"hit"),
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                self._observe(entry.route, time.perf_counter() - start)
                return
        await self.app(scope, receive, send)

    async def _servable(self, scope: Scope) -> CachedResponse | None:
        state = self.state
        cache = state.cache
        if cache is None or not cache.enabled or not scope["path"].startswith(self.prefix):
            return None
        api_key = authorization = None
        for name, value in scope["headers"]:
            # The first occurrence wins, as in starlette's Headers.get (what the route's dependencies read).
            if name == b"x-api-key":
                if api_key is None:
                    api_key = value.decode("latin-1")
            elif name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"origin":
                return None  # CORS headers are the CORS middleware's business
        token = None
        if authorization:
            scheme, credentials = get_authorization_scheme_param(authorization)
            if scheme and credentials and scheme.lower() == "bearer":
                token = credentials
        principal = cached_principal(state, token, api_key)
        if principal is not None and principal.family_id and session_touch_due(state, principal.family_id):
            try:
                await touch_session(state, principal.family_id)  # once a minute per session: its timeouts
            except (ApiError, psycopg.Error, OSError):
                principal = None  # the route answers: 401 (the session is now known to be revoked), or 503
        if principal is None:
            return None
        target = (principal.org_id, *request_target(scope))
        entry = cache.lookup(target)
        if entry is None or not principal.can(entry.permission):
            return None
        if state.limiter.retry_after(principal.actor, principal.rate_limit_per_minute) is not None:
            return None  # nothing consumed; the route answers 429 with Retry-After
        cache.record_hit(target)
        return entry

    def _observe(self, route: str, seconds: float) -> None:
        metrics = self.state.metrics
        if metrics is None:
            return
        child = self._latency.get(route)
        if child is None:
            child = self._latency[route] = metrics.latency.labels("GET", route, "200")
        child.observe(seconds)  # type: ignore[attr-defined]
        metrics.cache_hits.inc()
        metrics.fast_path_hits.inc()
