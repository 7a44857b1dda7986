"""Prometheus metrics of one app (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "optibid_api_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.errors = Counter(
            "optibid_api_errors_total",
            "HTTP responses with status >= 400",
            ["route", "status"],
            registry=self.registry,
        )
        self.ws_clients = Gauge(
            "optibid_api_websocket_clients", "Connected WebSocket clients", registry=self.registry
        )
        self.ws_dropped = Counter(
            "optibid_api_websocket_dropped_total",
            "WebSocket clients dropped for falling behind",
            registry=self.registry,
        )
        self.ws_messages = Counter(
            "optibid_api_websocket_messages_total",
            "Messages queued to WebSocket clients",
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "optibid_api_cache_hits_total", "Responses served from the cache", registry=self.registry
        )
        self.fast_path_hits = Counter(
            "optibid_api_cache_fast_path_hits_total",
            "Cache hits answered by the ASGI fast path, before routing (a subset of cache hits)",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Times every HTTP request, labelled by route template (bounded cardinality), not raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, prefix: str = "") -> None:
        self.app = app
        self.metrics = metrics
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope, self.prefix)
            self.metrics.latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
            if status >= 400:
                self.metrics.errors.labels(template, str(status)).inc()


def route_template(scope: Scope, prefix: str) -> str:
    """The route template label of a routed request ("unmatched" before or without routing)."""
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    # Routes of included routers report their path without the include prefix.
    if route is not None and scope["path"].startswith(prefix) and not template.startswith(prefix):
        template = prefix + template
    return template
