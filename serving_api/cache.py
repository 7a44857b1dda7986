"""Response cache for hot, immutable reads (ranges that end before today, UTC).

Keys include the versions of every (table, market_date) partition the range touches, taken from an
in-memory mirror of `ops.table_versions` that the shared listener keeps current (LISTEN
`optibid_table_version`). A re-materialized partition bumps its version (`bump_table_version`), so the old
entry never matches again: the next read recomputes and replaces it. While the listener is disconnected the
mirror may be stale, so the cache is bypassed (`enabled` is False) and cleared on reconnect.

Entries are stored per request target (organization, path, raw query string) together with the partition
range they cover, the permission the route required and its metrics label, so the ASGI fast path
(`serving_api.fastpath`) can serve a hit without parsing parameters: it only re-checks the versions digest
(skipped while no version changed since the last check, `TableVersions.generation`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from serving_api.security import Permission

MAX_CACHED_DAYS = 400


def request_target(scope) -> tuple[str, str]:
    """(path, raw query string) of an HTTP request: with the organization, what a cached response is for."""
    return scope["path"], scope["query_string"].decode("latin-1")


class TableVersions:
    """(table, market_date) → version, mirrored from ops.table_versions."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, date], int] = {}
        # Bumped on every change, so a digest validated at generation g is still valid while it is g.
        self.generation = 0

    def replace_all(self, rows: list[tuple[str, date, int]]) -> None:
        self._versions = {(t, d): v for t, d, v in rows}
        self.generation += 1

    def set(self, table: str, market_date: date, version: int) -> None:
        key = (table, market_date)
        self._versions[key] = max(version, self._versions.get(key, 0))
        self.generation += 1

    def digest(self, table: str, first: date, last: date) -> str:
        parts = []
        day = first
        while day <= last:
            parts.append(str(self._versions.get((table, day), 0)))
            day += timedelta(days=1)
        return hashlib.blake2s(",".join(parts).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Where a cacheable response lives and the partition versions it was computed from."""

    target: tuple[str, str, str]  # org_id, path, raw query string
    table: str
    first: date
    last: date
    digest: str
    generation: int  # TableVersions.generation when `digest` was computed


@dataclass
class CachedResponse:
    key: CacheKey
    body: bytes
    permission: Permission  # what the route required of the caller
    route: str  # route template, the metrics label
    checked_generation: int  # TableVersions.generation when `key.digest` was last found current


class ResponseCache:
    """An LRU of serialized responses, one per request target (the last one stored), bounded both by entry
    count and by the bytes of the bodies it holds (a few huge pages must not outgrow the count bound)."""

    def __init__(self, max_entries: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.versions = TableVersions()
        self.enabled = False
        self._entries: OrderedDict[tuple[str, str, str], CachedResponse] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key_for(
        self, org_id: str, path: str, query: str, table: str, t_from: datetime, t_to: datetime
    ) -> CacheKey | None:
        """The cache key of an immutable read, or None when the read is not cacheable."""
        if not self.enabled or self.max_entries <= 0:
            return None
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if t_to > today or (t_to - t_from).days > MAX_CACHED_DAYS:
            return None
        # market_date is the zone's local day: widen by a day on each side so any timezone is covered.
        first, last = t_from.date() - timedelta(days=1), t_to.date() + timedelta(days=1)
        digest = self.versions.digest(table, first, last)
        return CacheKey((org_id, path, query), table, first, last, digest, self.versions.generation)

    def get(self, key: CacheKey | None) -> bytes | None:
        if key is None:
            return None
        entry = self._entries.get(key.target)
        if entry is None or entry.key.digest != key.digest:
            self.misses += 1
            return None
        self._entries.move_to_end(key.target)
        self.hits += 1
        return entry.body

    def lookup(self, target: tuple[str, str, str]) -> CachedResponse | None:
        """The current entry of a request target without its parameters (the fast path); None on a miss.

        Counts nothing: a miss falls through to the route, whose `get` counts it; the fast path calls
        `record_hit` once it has decided to answer.
        """
        if not self.enabled:
            return None
        entry = self._entries.get(target)
        if entry is None:
            return None
        generation = self.versions.generation
        if entry.checked_generation != generation:
            key = entry.key
            if self.versions.digest(key.table, key.first, key.last) != key.digest:
                self._drop(target)  # a partition was re-materialized: never current again
                return None
            entry.checked_generation = generation
        return entry

    def record_hit(self, target: tuple[str, str, str]) -> None:
        self._entries.move_to_end(target)
        self.hits += 1

    def put(self, key: CacheKey | None, body: bytes, permission: str, route: str) -> None:
        if key is None or len(body) > self.max_bytes // 16:
            return  # one entry may hold at most 1/16 of the budget, so a single page cannot flush the rest
        self._drop(key.target)
        # Checked as of when the digest was computed, not now: a bump that arrived while the rows were being
        # read must make the fast path re-check this entry.
        self._entries[key.target] = CachedResponse(key, body, permission, route, key.generation)
        self._entries.move_to_end(key.target)
        self.bytes += len(body)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.body)

    def _drop(self, target: tuple[str, str, str]) -> None:
        entry = self._entries.pop(target, None)
        if entry is not None:
            self.bytes -= len(entry.body)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
