"""Which consumer process writes which Kafka partitions: per-partition leases held in Postgres.

Several consumer processes (members `0/N` … `N-1/N`) ingest the same topics into the same bronze tables,
each owning a disjoint set of partitions. A partition is owned by holding a Postgres session advisory lock
keyed by (lake root, topic, partition); member `i` prefers the partitions with `partition % N == i`.
A member is alive while it holds its member lock. When a member dies, even by SIGKILL, its connection
closes and Postgres releases its locks at once; a live member that has seen the dead member's partitions
free for `takeover_after_seconds` (a grace for members still starting) claims them and continues from the
offsets the dead member committed to Delta.

Why advisory locks and not a static assignment or a lease table with expiry: a static assignment cannot
take over a dead member's partitions without an operator, and a lease table needs heartbeats and an expiry
that trades takeover time against false takeovers of a slow member. A session lock ends exactly when its
holder's connection does, with no clock involved. A member that loses its connection (the database
restarted, the network split) must stop writing: `check()` raises `LeaseLostError`, which ends the run.
Even then the offsets stored in each Delta commit fence a stale owner: two processes appending the same
partition's app transaction conflict in delta-rs, so at most one of them commits a given batch.

A partition, once taken over, stays with its new owner until that owner stops; a restarted member gets
whatever is free (the leases are not rebalanced back).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg

_NAMESPACE = "optibid.cdc.lease:"


class LeaseLostError(RuntimeError):
    """The connection holding this member's leases is gone: another member may own its partitions now."""


class MemberRunningError(RuntimeError):
    """Another process already runs as this member of the lake's consumers."""


def parse_member(text: str) -> tuple[int, int]:
    """`"i/N"` as (i, N), with 0 <= i < N; a ValueError naming the expected form otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"member {text!r} is not of the form i/N (e.g. 0/3)") from None
    if not 0 <= index < count:
        raise ValueError(f"member {text!r}: i must be between 0 and N-1")
    return index, count


class PartitionLeases:
    """The leases of one member (`index` of `members`) on the partitions of the lake at `lake_root`."""

    def __init__(
        self, database_url: str, lake_root: str, index: int, members: int, *, takeover_after_seconds: float = 10.0
    ) -> None:
        self.database_url = database_url
        self.lake_root = lake_root.rstrip("/")
        self.index, self.members = index, members
        self.takeover_after_seconds = takeover_after_seconds
        self.held: set[tuple[str, int]] = set()
        self._free_since: dict[tuple[str, int], float] = {}
        self._conn: psycopg.Connection | None = None

    def __enter__(self) -> PartitionLeases:
        self._conn = psycopg.connect(self.database_url, autocommit=True)
        # Other members probe this lock for an instant to see whether this member is alive: try a few times.
        for _ in range(20):
            if self._try_lock(self._member_key(self.index)):
                return self
            time.sleep(0.1)
        self._conn.close()
        self._conn = None
        raise MemberRunningError(
            f"member {self.index}/{self.members} of the CDC consumers of {self.lake_root} is already running"
        )

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()  # releases every lock of the session
            self._conn = None
        self.held.clear()

    def preferred(self, topic: str, partition: int) -> bool:
        return partition % self.members == self.index

    def claim(self, partitions: Iterable[tuple[str, int]], *, take_over: bool = True) -> set[tuple[str, int]]:
        """Lease what is free of `partitions`: the preferred ones at once, others (with `take_over`) once
        they have been free for `takeover_after_seconds` as seen by this member. The newly leased ones."""
        now = time.monotonic()
        new = set()
        for tp in partitions:
            if tp in self.held:
                continue
            if not self.preferred(*tp):
                if not take_over:
                    continue
                owner = tp[1] % self.members
                if self._alive(owner):
                    self._free_since.pop(tp, None)
                    continue
                first_seen_free = self._free_since.setdefault(tp, now)
                if now - first_seen_free < self.takeover_after_seconds:
                    continue
            if self._try_lock(self._partition_key(*tp)):
                self.held.add(tp)
                new.add(tp)
        return new

    def check(self) -> None:
        """Raise `LeaseLostError` when the session holding the leases is gone."""
        try:
            self._connection().execute("SELECT 1")
        except psycopg.Error as exc:
            raise LeaseLostError(
                f"member {self.index}/{self.members}: lost the database session holding its partition leases ({exc})"
            ) from exc

    def _alive(self, member: int) -> bool:
        key = self._member_key(member)
        if not self._try_lock(key):
            return True
        self._connection().execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
        return False

    def _try_lock(self, key: str) -> bool:
        row = self._connection().execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
        return bool(row and row[0])

    def _connection(self) -> psycopg.Connection:
        if self._conn is None:
            raise RuntimeError("PartitionLeases is used outside its `with` block")
        return self._conn

    def _member_key(self, member: int) -> str:
        return f"{_NAMESPACE}{self.lake_root}:member:{member}/{self.members}"

    def _partition_key(self, topic: str, partition: int) -> str:
        return f"{_NAMESPACE}{self.lake_root}:partition:{topic}:{partition}"
