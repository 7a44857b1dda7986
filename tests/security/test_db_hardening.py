"""Defence in depth in Postgres (infra/sql/120_api_hardening.sql, ingestion/bi/access.py): the API's own
connections are the RLS-bound API role and fail closed without an organization scope, the API role gets
no table it was not explicitly granted, and an organization's BI login never reaches `bi_reader`'s rows."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingestion.bi.access import BiRoles, ensure_bi_roles
from ingestion.bi.tables import KPI_VALUES
from tests.bi.conftest import create_gold_table

# Organization rows the seeded database holds for both organizations (the owner's view proves them there).
ORG_ROWS = {
    "ops.users": "SELECT count(*) FROM ops.users WHERE org_id IS NOT NULL",
    "ops.api_keys": "SELECT count(*) FROM ops.api_keys",
    "ops.audit_log": "SELECT count(*) FROM ops.audit_log WHERE org_id IS NOT NULL",
    "gold.kpi_values": "SELECT count(*) FROM gold.kpi_values WHERE org_id IS NOT NULL",
    "silver.ref__assets": "SELECT count(*) FROM silver.ref__assets WHERE org_id IS NOT NULL",
    "ops.uploads": "SELECT count(*) FROM ops.uploads WHERE org_id IS NOT NULL",
}


def _api_connection_rows(client, queries: dict[str, str]) -> tuple[str, dict[str, int]]:
    """Run `queries` on a connection of the running app's pool WITHOUT taking an organization scope."""
    state = client.app.state.api

    async def run() -> tuple[str, dict[str, int]]:
        async with state.pool.connection() as conn:
            user = (await (await conn.execute("SELECT current_user")).fetchone())[0]
            counts = {}
            for name, query in queries.items():
                counts[name] = (await (await conn.execute(query)).fetchone())[0]
            return user, counts

    return client.portal.call(run)


def test_api_connection_without_org_scope_sees_no_org_rows(client, auth, security_database):
    from serving_api import cli

    auth("org_b", "admin")  # a login: refresh token and audit rows of org_b exist
    cli.create_api_key(security_database, "org_b", "sec-probe-b", "viewer")
    with psycopg.connect(security_database) as owner:
        owner.execute(
            "INSERT INTO ops.uploads (org_id, file_name, size_bytes, sha256, status)"
            " VALUES ('org_b', 'secret.csv', 1, 'sec-probe', 'failed')"
        )
        present = {name: owner.execute(query).fetchone()[0] for name, query in ORG_ROWS.items()}
        forced = dict(
            owner.execute(
                """SELECT c.oid::regclass::text, c.relforcerowsecurity FROM pg_class c
                   WHERE c.oid::regclass::text = ANY(%s)""",
                ([t for t in ORG_ROWS if not t.startswith("gold.")],),
            ).fetchall()
        )
    assert all(present.values()), present  # the owner sees rows of both organizations
    assert all(forced.values()) and len(forced) == len(ORG_ROWS) - 1, forced

    user, counts = _api_connection_rows(client, ORG_ROWS)
    assert user == "optibid_api"
    assert counts == dict.fromkeys(ORG_ROWS, 0)


def test_api_role_reads_credentials_only_through_definer_functions(client):
    state = client.app.state.api

    async def run(query: str) -> None:
        async with state.pool.connection() as conn:
            await conn.execute(query)

    for query in ("SELECT count(*) FROM ops.refresh_tokens", "SELECT count(*) FROM ops.login_attempts"):
        with pytest.raises(errors.InsufficientPrivilege):
            client.portal.call(run, query)


def test_api_role_cannot_read_a_new_ops_table_by_default(client, security_database):
    table = f"ops.sec_probe_{os.getpid()}"
    with psycopg.connect(security_database, autocommit=True) as owner:
        owner.execute(f"CREATE TABLE IF NOT EXISTS {table} (org_id text, secret text)")
        owner.execute(f"INSERT INTO {table} VALUES ('org_b', 'hidden')")
    try:
        with psycopg.connect(security_database) as owner:
            granted = owner.execute("SELECT has_table_privilege('optibid_api', %s, 'SELECT')", (table,)).fetchone()
        assert granted == (False,)
        with pytest.raises(errors.InsufficientPrivilege):
            _api_connection_rows(client, {"probe": f"SELECT count(*) FROM {table}"})
    finally:
        with psycopg.connect(security_database, autocommit=True) as owner:
            owner.execute(f"DROP TABLE IF EXISTS {table}")


def test_login_and_api_key_lookups_still_work_through_definer_functions(client, security_database):
    from serving_api import cli
    from tests.security.conftest import login

    key = cli.create_api_key(security_database, "org_a", "sec-probe", "analyst")
    resp = client.get("/api/v1/assets", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.text
    assert all(a.get("org_id") in (None, "org_a") for a in resp.json())
    assert login(client, "viewer@org_b.test").status_code == 200
    assert login(client, "viewer@org_b.test", "wrong-password-1").status_code == 401
    with psycopg.connect(security_database) as owner:
        last = owner.execute(
            "SELECT org_id, action FROM ops.audit_log WHERE target = 'viewer@org_b.test' ORDER BY id DESC LIMIT 2"
        ).fetchall()
    assert last == [("org_b", "login.failure"), ("org_b", "login.success")]


# --- BI roles -----------------------------------------------------------------------------------------------
ROLES = BiRoles(reader=f"sectest{os.getpid()}_reader", org_prefix=f"sectest{os.getpid()}_org_")


@pytest.fixture
def bi_database(database_url: str) -> Iterator[str]:
    from infra import db

    name = f"optibid_sec_bi_{os.getpid()}"
    url = db.create_database(database_url, name, drop_existing=True)
    with psycopg.connect(url, autocommit=True) as conn:
        create_gold_table(conn, KPI_VALUES)
        conn.execute(
            """INSERT INTO gold.kpi_values (kpi_code, grain, zone, org_id, period_start, market_date, value)
               VALUES ('price_spread', 'day', 'NO1', NULL, '2024-01-01 00:00+00', '2024-01-01', 2),
                      ('revenue', 'day', 'NO1', 'org_a', '2024-01-01 00:00+00', '2024-01-01', 100),
                      ('revenue', 'day', 'NO1', 'org_b', '2024-01-01 00:00+00', '2024-01-01', 900)"""
        )
        ensure_bi_roles(conn, ["org_a", "org_b"], roles=ROLES, specs=[KPI_VALUES])
        # The gold layer's convention makes org roles members of the reader: that must not widen them.
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(ROLES.reader), sql.Identifier(ROLES.org_role("org_a")))
        )
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        for role in (ROLES.reader, ROLES.org_role("org_a"), ROLES.org_role("org_b")):
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    db.drop_database(database_url, name)


def _connect_as(url: str, role: str) -> psycopg.Connection:
    params = conninfo_to_dict(url)
    params["user"] = role
    params.pop("password", None)
    return psycopg.connect(make_conninfo(**params), autocommit=True)


def test_org_role_cannot_reach_other_orgs_rows_through_bi_reader(bi_database):
    def orgs(conn: psycopg.Connection) -> set[str | None]:
        return {r[0] for r in conn.execute("SELECT org_id FROM gold.kpi_values")}

    with _connect_as(bi_database, ROLES.reader) as reader:
        assert orgs(reader) == {None, "org_a", "org_b"}  # the reader itself sees everything
    with _connect_as(bi_database, ROLES.org_role("org_a")) as conn:
        assert orgs(conn) == {None, "org_a"}
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ROLES.reader)))
        assert orgs(conn) == {None, "org_a"}
        conn.execute("SET optibid.org_id = 'org_b'")
        assert orgs(conn) == {None, "org_a"}
        assert {r[0] for r in conn.execute("SELECT organisation_id FROM bi.kpi_values")} <= {None, "org_a"}
