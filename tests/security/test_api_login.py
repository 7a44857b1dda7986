"""The API's own login (infra/sql/130_api_login.sql, `OPTIBID_API_DATABASE_URL`) and forced row-level security
on gold as dbt builds it: a connection as that login that forgets `SET ROLE` and the organization scope sees
public rows only, it reads no `ops` table it was not granted, it can become no role but the API role, and an
organization's BI role cannot reach `bi_reader`'s rows of a dbt-built table."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import private_database
from tests.security.conftest import PROXY, login, make_app

LOGIN = "optibid_api_login"
# dbt-built gold tables holding organization rows in the gold tests' silver fixture (tests/gold).
GOLD_ORG_TABLES = ("kpi_values", "fct_positions", "fct_trades", "fct_bids", "dim_asset", "fct_prices_hourly")
GOLD_MARKET_WIDE = ("dim_zone", "dim_node", "dim_calendar", "kpi_catalog")
OPS_ORG_TABLES = ("ops.users", "ops.api_keys", "ops.audit_log", "ops.uploads")


def _as_user(url: str, user: str, password: str | None = None) -> str:
    params = conninfo_to_dict(url)
    params["user"] = user
    params.pop("password", None)
    if password:
        params["password"] = password
    return make_conninfo(**params)


@pytest.fixture(scope="module")
def api_login_url(security_database: str) -> str:
    """The URL the API is given as OPTIBID_API_DATABASE_URL; its password is set the way the API sets it."""
    from serving_api.app import provision_api_login

    url = _as_user(security_database, LOGIN, secrets.token_urlsafe(24))
    provision_api_login(security_database, url)
    return url


@pytest.fixture(scope="module")
def gold_database(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Gold exactly as dbt builds it: the gold tests' silver rows and one real `dbt build`, in its own database."""
    from infra.dbt import run_dbt
    from tests.gold.silver_fixture import load_fixture

    for url in private_database(database_url, "optibid_security_gold"):
        load_fixture(url)
        run_dbt(["build"], database_url=url, target_path=tmp_path_factory.mktemp("dbt_target"))
        yield url


def _login_to(url: str, api_login_url: str) -> psycopg.Connection:
    """A connection as the API login to the database of `url`: no SET ROLE, no organization scope."""
    params = conninfo_to_dict(api_login_url)
    params["dbname"] = conninfo_to_dict(url)["dbname"]
    return psycopg.connect(make_conninfo(**params), autocommit=True)


def _org_counts(conn: psycopg.Connection, tables: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(organization rows, public rows) of each table."""
    counts = {}
    for table in tables:
        query = sql.SQL(
            "SELECT count(*) FILTER (WHERE org_id IS NOT NULL), count(*) FILTER (WHERE org_id IS NULL) FROM {}"
        ).format(sql.Identifier(*table.split(".")))
        counts[table] = conn.execute(query).fetchone()
    return counts


def test_gold_org_tables_built_by_dbt_have_forced_rls_and_market_wide_ones_none(gold_database: str) -> None:
    with psycopg.connect(gold_database) as owner:
        rows = owner.execute(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      array(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1),
                      EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'org_id'
                              AND NOT a.attisdropped)
               FROM pg_class c WHERE c.relnamespace = 'gold'::regnamespace AND c.relkind = 'r'"""
        ).fetchall()
    tables = {name: (enabled, forced, policies, has_org) for name, enabled, forced, policies, has_org in rows}
    assert set(GOLD_ORG_TABLES) | set(GOLD_MARKET_WIDE) <= set(tables)
    org_scoped = {name for name, (*_, has_org) in tables.items() if has_org}
    assert org_scoped >= set(GOLD_ORG_TABLES) and not org_scoped & set(GOLD_MARKET_WIDE)
    for name in org_scoped:
        enabled, forced, policies, _ = tables[name]
        assert enabled and forced and {"org_isolation", "owner_unscoped"} <= set(policies), (name, tables[name])
    for name in GOLD_MARKET_WIDE:
        assert tables[name][:2] == (False, False), (name, tables[name])


def test_api_login_without_set_role_sees_no_organization_rows_in_dbt_gold(
    gold_database: str, api_login_url: str
) -> None:
    with psycopg.connect(gold_database) as owner:
        everything = _org_counts(owner, tuple(f"gold.{t}" for t in GOLD_ORG_TABLES))
    assert all(org_rows > 0 for org_rows, _ in everything.values()), everything

    with _login_to(gold_database, api_login_url) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (LOGIN, LOGIN)
        as_login = _org_counts(conn, tuple(f"gold.{t}" for t in GOLD_ORG_TABLES))
        conn.execute("SET ROLE optibid_api")  # the role without its organization scope: the same
        as_api_role = _org_counts(conn, tuple(f"gold.{t}" for t in GOLD_ORG_TABLES))
        market_wide = {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("gold", t))).fetchone()[0]
            for t in GOLD_MARKET_WIDE
        }
    # No error and no organization's row; public rows stay readable (this is RLS, not a missing grant).
    expected = {table: (0, public) for table, (_, public) in everything.items()}
    assert as_login == expected
    assert as_api_role == expected
    assert all(market_wide.values()), market_wide


def test_a_full_dbt_rebuild_secures_the_new_table_again(gold_database: str, api_login_url: str, tmp_path: Path) -> None:
    from infra.dbt import run_dbt

    def state(conn: psycopg.Connection) -> tuple:
        return conn.execute(
            "SELECT oid, relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'gold.fct_bids'::regclass"
        ).fetchone()

    with psycopg.connect(gold_database) as owner:
        before = state(owner)
    run_dbt(["run", "--select", "fct_bids", "--full-refresh"], database_url=gold_database, target_path=tmp_path)
    with psycopg.connect(gold_database) as owner:
        after = state(owner)
        org_rows = _org_counts(owner, ("gold.fct_bids",))["gold.fct_bids"][0]
    assert after[0] != before[0] and after[1:] == (True, True)  # a new table, secured again
    assert org_rows > 0
    with _login_to(gold_database, api_login_url) as conn:
        assert _org_counts(conn, ("gold.fct_bids",))["gold.fct_bids"][0] == 0


def test_api_login_without_set_role_sees_no_organization_rows_in_ops(
    client, auth, security_database: str, api_login_url: str
) -> None:
    from serving_api import cli

    auth("org_b", "admin")  # a login: audit rows of org_b exist
    cli.create_api_key(security_database, "org_b", "login-probe-b", "viewer")
    with psycopg.connect(security_database) as owner:
        owner.execute(
            "INSERT INTO ops.uploads (org_id, file_name, size_bytes, sha256, status)"
            " VALUES ('org_b', 'login-secret.csv', 1, 'login-probe', 'failed')"
        )
        everything = _org_counts(owner, OPS_ORG_TABLES)
    assert all(org_rows > 0 for org_rows, _ in everything.values()), everything

    with _login_to(security_database, api_login_url) as conn:
        assert {t: org_rows for t, (org_rows, _) in _org_counts(conn, OPS_ORG_TABLES).items()} == dict.fromkeys(
            OPS_ORG_TABLES, 0
        )
        for table in ("ops.refresh_tokens", "ops.login_attempts"):  # credentials: definer functions only
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {table}")


def test_api_login_cannot_read_a_new_ops_table(security_database: str, api_login_url: str) -> None:
    table = f"ops.login_probe_{os.getpid()}"
    with psycopg.connect(security_database, autocommit=True) as owner:
        owner.execute(f"CREATE TABLE IF NOT EXISTS {table} (org_id text, secret text)")
        owner.execute(f"INSERT INTO {table} VALUES ('org_b', 'hidden')")
    try:
        with _login_to(security_database, api_login_url) as conn:
            assert conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (table,)).fetchone() == (False,)
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {table}")
    finally:
        with psycopg.connect(security_database, autocommit=True) as owner:
            owner.execute(f"DROP TABLE IF EXISTS {table}")


def test_api_login_can_become_the_api_role_and_nothing_else(gold_database: str, api_login_url: str) -> None:
    with psycopg.connect(gold_database) as owner:
        owner_role = owner.execute("SELECT current_user").fetchone()[0]
        attributes = owner.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s", (LOGIN,)
        ).fetchone()
    assert attributes == (False, False, False, False)
    with _login_to(gold_database, api_login_url) as conn:
        conn.execute("SET ROLE optibid_api")
        conn.execute("RESET ROLE")
        # bi_reader exists (dbt's on-run-start creates it); its USING (true) policy must be out of reach.
        for role in ("bi_reader", "optibid_auth", owner_role):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def test_org_bi_role_cannot_reach_other_orgs_rows_of_dbt_gold_through_bi_reader(gold_database: str) -> None:
    from ingestion.bi.access import BiRoles, ensure_bi_roles
    from ingestion.bi.tables import KPI_VALUES

    roles = BiRoles(reader=f"logintest{os.getpid()}_reader", org_prefix=f"logintest{os.getpid()}_org_")
    with psycopg.connect(gold_database, autocommit=True) as owner:
        ensure_bi_roles(owner, ["acme", "voltindia"], roles=roles, specs=[KPI_VALUES])
        # The gold layer's convention makes org roles members of the reader: that must not widen them.
        owner.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(roles.reader), sql.Identifier(roles.org_role("acme")))
        )
        everything = {r[0] for r in owner.execute("SELECT DISTINCT org_id FROM gold.kpi_values")}
    try:
        assert {"acme", "voltindia"} <= everything
        with psycopg.connect(_as_user(gold_database, roles.org_role("acme")), autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(roles.reader)))
            conn.execute("SET optibid.org_id = 'voltindia'")
            assert {r[0] for r in conn.execute("SELECT DISTINCT org_id FROM gold.kpi_values")} == {None, "acme"}
    finally:
        with psycopg.connect(gold_database, autocommit=True) as owner:
            for role in (roles.reader, roles.org_role("acme"), roles.org_role("voltindia")):
                owner.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
                owner.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _pool_identity(client: TestClient) -> tuple[str, str]:
    """(session_user, current_user) of a connection from the running app's pool."""
    state = client.app.state.api

    async def who() -> tuple[str, str]:
        async with state.pool.connection() as conn:
            return await (await conn.execute("SELECT session_user, current_user")).fetchone()

    return client.portal.call(who)


def test_the_api_serves_requests_as_its_login(security_settings, api_login_url: str) -> None:
    settings = security_settings.model_copy(update={"api_database_url": api_login_url})
    with TestClient(make_app(settings), client=PROXY) as client:
        state = client.app.state.api
        assert _pool_identity(client) == (LOGIN, "optibid_api")
        assert state.hub.connected  # the listener connects as the login too
        token = login(client, "analyst@org_a.test", address="198.51.100.77")
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assets = client.get("/api/v1/assets", headers=headers)
        assert assets.status_code == 200, assets.text
        assert assets.json() and {a.get("org_id") for a in assets.json()} <= {None, "org_a"}
        export = client.get("/api/v1/uploads", params={"format": "csv"}, headers=headers)  # its own connection
        assert export.status_code == 200, export.text
        assert "login-secret.csv" not in export.text  # org_b's upload


def test_the_api_refuses_to_serve_as_the_owner(security_settings, security_database: str) -> None:
    settings = security_settings.model_copy(update={"api_database_url": security_database})
    with pytest.raises(RuntimeError, match="OPTIBID_API_DATABASE_URL"), TestClient(make_app(settings), client=PROXY):
        pass


def test_by_default_the_api_serves_as_its_own_login_not_the_owner(security_settings) -> None:
    """Without OPTIBID_API_DATABASE_URL the API sets up its login on the warehouse itself (a password derived
    from the token secret, the same in every worker), so a connection that forgets `SET ROLE` fails closed
    on the embedded default too, where the owner is a superuser."""
    assert not security_settings.api_database_url
    with TestClient(make_app(security_settings), client=PROXY) as client:
        state = client.app.state.api
        assert _pool_identity(client) == (LOGIN, "optibid_api")
        assert conninfo_to_dict(state.api_database_url)["user"] == LOGIN
        with psycopg.connect(state.api_database_url) as bare:  # no SET ROLE, no organization scope
            assert bare.execute("SELECT rolsuper FROM pg_roles WHERE rolname = session_user").fetchone() == (False,)
            with pytest.raises(errors.InsufficientPrivilege):
                bare.execute("SELECT count(*) FROM ops.login_attempts").fetchone()
        token = login(client, "analyst@org_a.test", address="198.51.100.78")
        assert token.status_code == 200, token.text
