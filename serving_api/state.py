"""Process-wide state of one API app: options, the connection pool, caches, limiter, metrics, hub."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from serving_api.cache import ResponseCache
    from serving_api.freshness import FreshnessReader
    from serving_api.metrics import ApiMetrics
    from serving_api.streaming import Hub


@dataclass(frozen=True)
class ApiOptions:
    """Tuning knobs with production defaults; tests and benchmarks pass their own."""

    user_rate_limit_per_minute: int = 1200
    cache_max_entries: int = 4096
    ws_queue_size: int = 64
    ws_heartbeat_seconds: float = 15.0
    pool_min_size: int = 2
    pool_max_size: int = 10
    max_page_size: int = 10_000
    export_chunk_rows: int = 5_000
    login_max_failures: int = 5
    login_window_seconds: int = 15 * 60
    login_max_failures_per_ip: int = 50
    api_key_cache_seconds: float = 30.0
    table_catalog_seconds: float = 60.0


class RateLimiter:
    """Per-credential token buckets (in this process; N workers allow N times the rate)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def retry_after(self, key: str, per_minute: int) -> int | None:
        """None when a request is allowed now (and consume a token), else whole seconds to wait."""
        now = time.monotonic()
        rate = per_minute / 60.0
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))


@dataclass
class ApiState:
    settings: Settings
    options: ApiOptions
    jwt_secret: str
    database_url: str = ""
    pool: AsyncConnectionPool | None = None
    cache: ResponseCache | None = None
    hub: Hub | None = None
    metrics: ApiMetrics | None = None
    freshness: FreshnessReader | None = None
    limiter: RateLimiter = field(default_factory=RateLimiter)
    revoked_families: set[str] = field(default_factory=set)
    api_keys: dict[str, tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    table_catalog: dict[str, tuple[float, dict[str, str] | None, bool]] = field(default_factory=dict)
