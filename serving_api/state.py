"""State of one API app: options, the connection pool, caches, metrics, hub (per process) and the rate
limiter (shared by the processes of a host)."""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from serving_api.cache import ResponseCache
    from serving_api.forecast_jobs import ForecastJobRunner
    from serving_api.freshness import FreshnessReader
    from serving_api.metrics import ApiMetrics
    from serving_api.security import AccessClaims
    from serving_api.solver import SolverProcesses
    from serving_api.streaming import Hub
    from serving_api.token_keys import TokenKeys


@dataclass(frozen=True)
class ApiOptions:
    """Tuning knobs with production defaults; tests and benchmarks pass their own."""

    user_rate_limit_per_minute: int = 1200
    cache_max_entries: int = 4096
    cache_fast_path: bool = True  # serve cache hits before routing (serving_api.fastpath)
    freeze_gc_after_startup: bool = True  # gc.freeze() once started: no full-heap GC pauses
    ws_queue_size: int = 64
    ws_heartbeat_seconds: float = 15.0
    ws_dashboard_max_streams: int = 20  # KPI streams one dashboard WebSocket may subscribe to
    pool_min_size: int = 2
    pool_max_size: int = 10
    max_page_size: int = 10_000
    export_chunk_rows: int = 5_000
    # Responses of at least this many bytes are gzip-compressed for clients that accept it (0 disables);
    # level 6 costs a third of level 9's CPU for nearly the same size on JSON and CSV.
    gzip_min_bytes: int = 1024
    gzip_level: int = 6
    # Login throttling (routers/auth.py): failures beyond these counts cost a progressive delay, never a
    # refusal of the right password; only the same (e-mail, address) pair is refused during its backoff.
    login_max_failures: int = 5
    login_window_seconds: int = 15 * 60
    login_max_failures_per_ip: int = 50
    login_delay_base_seconds: float = 0.25
    login_delay_max_seconds: float = 4.0
    login_backoff_max_seconds: int = 15 * 60
    password_hash_concurrency: int = 4
    password_hash_nice: int = 10  # CPU priority of password verification relative to request handling
    api_key_cache_seconds: float = 30.0
    api_key_cache_max_entries: int = 10_000  # known and unknown prefixes together (LRU)
    table_catalog_seconds: float = 60.0
    # A table not materialized yet is looked for again soon: the pipeline's first build must not wait out the
    # catalog's minute before the API serves it.
    missing_table_recheck_seconds: float = 1.0
    cache_max_bytes: int = 64 * 1024 * 1024
    max_body_bytes: int = 2 * 1024 * 1024  # JSON bodies (optimize, mapping, admin)
    max_auth_body_bytes: int = 16 * 1024
    max_saml_response_bytes: int = 512 * 1024  # POSTs to the SAML ACS (signed Responses with many groups)
    max_query_params: int = 32
    optimize_timeout_s: float = 30.0  # wall time of one optimize request's solve, model building included
    solver_nice: int = 10  # CPU priority of the solver processes relative to the API's
    solver_queue_wait_s: float = 5.0  # a request waits this long for an idle solver process, else 503
    upload_worker_processes: int = 2  # large uploads processed at once, each in a child process
    ws_auth_recheck_seconds: float = 1.0
    # Identity (serving_api/routers/account.py, identity_admin.py, sso.py, saml.py).
    session_touch_seconds: float = 60.0  # a session's last use is recorded (and its timeouts checked) this often
    mfa_challenge_seconds: int = 300  # how long the first login step's proof waits for the second factor
    mfa_max_attempts_per_challenge: int = 5  # wrong codes before the password must be entered again
    oidc_state_seconds: int = 600  # how long a started SSO login (OIDC state, SAML RelayState) may take
    oidc_http_timeout_seconds: float = 10.0
    oidc_metadata_cache_seconds: float = 3600.0  # discovery documents and JWKS (refetched on an unknown kid)
    # On-demand forecast jobs (routers/forecast_jobs.py; worker processes: OPTIBID_API_FORECAST_JOB_PROCESSES):
    # the hard wall-clock limit of one job (the request may ask for less), jobs waiting or running per API
    # process, and the pipeline's interval calibration days (28 in production; tests shorten it).
    forecast_job_timeout_s: float = 1800.0
    forecast_job_max_pending: int = 8
    forecast_job_calibration_days: int = 28
    listener_keepalive_seconds: float = 5.0


class RateLimiter:
    """Per-credential token buckets shared by every API process on this host (the workers of one server).

    Why shared: with `uvicorn --workers N`, per-process buckets would let a client whose connections land on
    different workers use N times its limit, and dividing the limit by N would starve a client whose one
    keep-alive connection sticks to one worker. So the buckets live in a small memory-mapped file
    (`path`, fixed slots) and each decision runs under an exclusive `flock` (~2 µs); CLOCK_MONOTONIC is
    host-wide, so every process refills the same way. Limits are exact per host; separate hosts or pods
    (replicas) each enforce the full limit (see benchmarks/README_api.md).

    A slot is found by open addressing over `PROBES` slots from the key's hash; when all are taken by
    other keys, the least recently used of them is reused (a bucket idle for a minute is full anyway).
    """

    SLOTS = 8192
    PROBES = 8
    _HEADER = b"optibid-rl-v1\0\0\0"
    _SLOT = struct.Struct("<16sdd")  # blake2b(key), tokens, last refill (time.monotonic)
    _EMPTY = bytes(16)

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = len(self._HEADER) + self.SLOTS * self._SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size != size or os.pread(self._fd, len(self._HEADER), 0) != self._HEADER:
                os.ftruncate(self._fd, 0)  # another format or a torn file: start with full buckets
                os.ftruncate(self._fd, size)
                os.pwrite(self._fd, self._HEADER, 0)
        self._map = mmap.mmap(self._fd, size)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def retry_after(self, key: str, per_minute: int) -> int | None:
        """None when a request is allowed now (and consume a token), else whole seconds to wait."""
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        first = int.from_bytes(digest[:8], "little")
        rate = per_minute / 60.0
        capacity = float(per_minute)
        slot, header = self._SLOT, len(self._HEADER)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # inline, not _locked(): this runs on every request
        try:
            now = time.monotonic()
            offset, tokens, last, oldest = -1, capacity, now, math.inf
            for probe in range(self.PROBES):
                at = header + ((first + probe) % self.SLOTS) * slot.size
                owner, slot_tokens, slot_last = slot.unpack_from(self._map, at)
                if owner == digest:
                    offset, tokens, last = at, slot_tokens, slot_last
                    break
                if owner == self._EMPTY:
                    offset = at
                    break
                if slot_last < oldest:
                    offset, oldest = at, slot_last
            if last > now:  # written before a reboot (the monotonic clock restarted): a fresh bucket
                tokens, last = capacity, now
            tokens = min(capacity, tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            slot.pack_into(self._map, offset, digest, tokens - 1.0 if allowed else tokens, now)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return None if allowed else max(1, math.ceil((1.0 - tokens) / rate))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


@dataclass
class ApiState:
    settings: Settings
    options: ApiOptions
    jwt_secret: str
    limiter: RateLimiter
    token_keys: TokenKeys
    database_url: str = ""  # the owner's: migrations and upload processing (pipeline writes)
    api_database_url: str = ""  # what serves requests: the pool, exports, the listener (as optibid_api)
    pool: AsyncConnectionPool | None = None
    cache: ResponseCache | None = None
    hub: Hub | None = None
    metrics: ApiMetrics | None = None
    freshness: FreshnessReader | None = None
    solver: SolverProcesses | None = None
    forecast_jobs: ForecastJobRunner | None = None  # started on the first forecast job
    revoked_families: set[str] = field(default_factory=set)
    api_keys: OrderedDict[str, tuple[float, dict[str, Any] | None]] = field(default_factory=OrderedDict)
    access_claims: dict[str, AccessClaims] = field(default_factory=dict)
    session_touched: dict[str, float] = field(default_factory=dict)  # family -> monotonic time of last record
    oidc_metadata: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # url -> (at, document)
    table_catalog: dict[str, tuple[float, dict[str, str] | None, bool]] = field(default_factory=dict)
