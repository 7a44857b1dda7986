"""How a database connection of the API is bound to the row-level-security role and to one organization.

What belongs here: the API role's name and the two statements that bind a connection: `assume_api_role` for
the whole session of a connection the API opens, `set_org_scope` inside one transaction. Every module that
opens a connection (the request dependency in `serving_api/deps.py`, the listener in `streaming.py`, the
exports) imports them from here, so this module imports nothing of the API.

What does not: deciding who may read what. `deps.scoped(permission)` stays the one tenancy gate a request
passes; this module only carries out its decision on a connection.
"""

from __future__ import annotations

from psycopg import AsyncConnection

API_ROLE = "optibid_api"


async def assume_api_role(conn: AsyncConnection) -> None:
    """For the whole session of a connection the API opens: act as the RLS-bound API role, never the owner.

    A query that forgets `set_org_scope` then runs with no organization and sees no org rows (fails
    closed); pre-authentication lookups go through the `api_auth` functions (infra/sql/120_api_hardening.sql).
    """
    autocommit = conn.autocommit
    await conn.set_autocommit(True)
    await conn.execute(f"SET ROLE {API_ROLE}")
    await conn.set_autocommit(autocommit)


async def set_org_scope(conn: AsyncConnection, org_id: str) -> None:
    """Inside the current transaction: become the RLS-bound API role with the caller's organization."""
    await conn.execute("SELECT set_config('optibid.org_id', %s, true)", (org_id,))
    await conn.execute(f"SET LOCAL ROLE {API_ROLE}")
