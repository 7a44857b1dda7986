"""Response cache for hot, immutable reads (ranges that end before today, UTC).

Keys include the versions of every (table, market_date) partition the range touches, taken from an
in-memory mirror of `ops.table_versions` that the shared listener keeps current (LISTEN
`optibid_table_version`). A re-materialized partition bumps its version (`bump_table_version`), so the old
entry is simply never hit again and ages out of the LRU. While the listener is disconnected the mirror may
be stale, so the cache is bypassed (`enabled` is False) and cleared on reconnect.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta

MAX_CACHED_DAYS = 400


class TableVersions:
    """(table, market_date) → version, mirrored from ops.table_versions."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, date], int] = {}

    def replace_all(self, rows: list[tuple[str, date, int]]) -> None:
        self._versions = {(t, d): v for t, d, v in rows}

    def set(self, table: str, market_date: date, version: int) -> None:
        key = (table, market_date)
        self._versions[key] = max(version, self._versions.get(key, 0))

    def digest(self, table: str, first: date, last: date) -> str:
        parts = []
        day = first
        while day <= last:
            parts.append(str(self._versions.get((table, day), 0)))
            day += timedelta(days=1)
        return hashlib.blake2s(",".join(parts).encode(), digest_size=8).hexdigest()


class ResponseCache:
    """A bounded LRU of serialized responses."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.versions = TableVersions()
        self.enabled = False
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key_for(self, org_id: str, path: str, query: str, table: str, t_from: datetime, t_to: datetime):
        """The cache key of an immutable read, or None when the read is not cacheable."""
        if not self.enabled or self.max_entries <= 0:
            return None
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if t_to > today or (t_to - t_from).days > MAX_CACHED_DAYS:
            return None
        # market_date is the zone's local day: widen by a day on each side so any timezone is covered.
        first, last = t_from.date() - timedelta(days=1), t_to.date() + timedelta(days=1)
        return (org_id, path, query, self.versions.digest(table, first, last))

    def get(self, key) -> bytes | None:
        if key is None:
            return None
        body = self._entries.get(key)
        if body is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return body

    def put(self, key, body: bytes) -> None:
        if key is None:
            return
        self._entries[key] = body
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
