"""Who writes a lake's CDC tables: follow-mode consumers own them for as long as they run.

Two writers of the same topics into the same Delta tables would each read every event; the offsets kept in
the commits make the second commit fail rather than duplicate, but a drain that runs beside a follow-mode
consumer only fails. So the follow-mode consumer holds a Postgres advisory lock, keyed by the lake's root,
for its whole life (Postgres releases it when the process dies), and drains and the lag sensor step aside
while it is held. Postgres, not the lake, holds it because a lake on S3 has no lock of its own.
Members of a group of consumer processes (`ingestion.cdc.leases`, each writing its own partitions) hold
the same lock shared: they exclude a lone follow-mode consumer and drains, not one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

_LOCK_NAMESPACE = "optibid.cdc.follow:"


def _key(lake_root: str) -> str:
    return _LOCK_NAMESPACE + lake_root.rstrip("/")


@contextmanager
def follow_mode_ownership(database_url: str, lake_root: str, *, shared: bool = False) -> Iterator[bool]:
    """Hold the follow-mode lock of `lake_root` while the block runs (`shared` for members of a consumer
    group); yields False when another process holds it in a conflicting mode (and then holds nothing)."""
    mode = "_shared" if shared else ""
    with psycopg.connect(database_url, autocommit=True) as conn:
        held = conn.execute(
            f"SELECT pg_try_advisory_lock{mode}(hashtextextended(%s, 0))", (_key(lake_root),)
        ).fetchone()[0]
        try:
            yield bool(held)
        finally:
            if held:
                conn.execute(f"SELECT pg_advisory_unlock{mode}(hashtextextended(%s, 0))", (_key(lake_root),))


def follow_mode_active(database_url: str, lake_root: str) -> bool:
    """Whether a follow-mode consumer currently owns `lake_root`'s CDC tables."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND (l.classid::bigint << 32 | l.objid::bigint) = hashtextextended(%s, 0)",
            (_key(lake_root),),
        ).fetchone()
    return bool(row[0])
