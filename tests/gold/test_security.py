"""Row-level security on gold: an org-scoped reader sees its own rows and public rows only."""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

from infra import db

ORG_TABLES = ("fct_bids", "fct_trades", "fct_positions", "kpi_values", "dim_asset", "fct_prices_hourly")


def _count_by_org(conn: psycopg.Connection, table: str) -> dict[str | None, int]:
    query = sql.SQL("SELECT org_id, count(*) FROM {} GROUP BY org_id").format(sql.Identifier("gold", table))
    return {r[0]: r[1] for r in conn.execute(query)}


def test_rls_enabled_on_every_gold_table_with_org_id(gold_built: str) -> None:
    with db.connect(gold_built) as conn:
        rows = conn.execute(
            """SELECT c.relname, c.relrowsecurity,
                      EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = 'gold'
                              AND p.tablename = c.relname AND p.policyname = 'org_isolation')
               FROM pg_class c JOIN information_schema.columns col
                 ON col.table_schema = 'gold' AND col.table_name = c.relname AND col.column_name = 'org_id'
               WHERE c.relnamespace = 'gold'::regnamespace AND c.relkind = 'r'"""
        ).fetchall()
    dbt_tables = {r[0] for r in rows} & {
        *ORG_TABLES,
        "fct_load_hourly",
        "fct_generation_hourly",
        "fct_prices_5min",
        "dim_org",
    }
    assert dbt_tables >= set(ORG_TABLES)
    assert all(enabled and policy for name, enabled, policy in rows if name in dbt_tables), rows


def test_reader_sees_only_its_org(gold_built: str) -> None:
    with db.connect(gold_built) as conn:
        everything = {t: _count_by_org(conn, t) for t in ORG_TABLES}
        conn.execute("SET ROLE bi_reader")
        conn.execute("SELECT set_config('optibid.org_id', 'acme', true)")
        as_acme = {t: _count_by_org(conn, t) for t in ORG_TABLES}
        conn.execute("SELECT set_config('optibid.org_id', 'voltindia', true)")
        as_volt = {t: _count_by_org(conn, t) for t in ORG_TABLES}
        conn.execute("SELECT set_config('optibid.org_id', '', true)")
        anonymous = {t: _count_by_org(conn, t) for t in ORG_TABLES}
    assert everything["fct_bids"] == {"acme": 5, "voltindia": 1}
    assert as_acme["fct_bids"] == {"acme": 5}
    assert as_volt["fct_bids"] == {"voltindia": 1}
    assert anonymous["fct_bids"] == {}
    for table in ORG_TABLES:
        expected_acme = {k: v for k, v in everything[table].items() if k in (None, "acme")}
        assert as_acme[table] == expected_acme, table
        assert set(anonymous[table]) <= {None}, table
    # acme's private uploaded ERCOT price and its KPIs are invisible to voltindia
    assert everything["fct_prices_hourly"].get("acme") == 1 and "acme" not in as_volt["fct_prices_hourly"]
    assert as_volt["kpi_values"].get(None) == everything["kpi_values"][None]


def test_org_role_with_fixed_setting(gold_built: str) -> None:
    """A BI organization role: member of bi_reader, `optibid.org_id` fixed on the role, logs in itself."""
    role = f"org_acme_gold_test_{os.getpid()}"
    with db.connect(gold_built, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE bi_reader").format(sql.Identifier(role)))
        admin.execute(sql.SQL("ALTER ROLE {} SET optibid.org_id = 'acme'").format(sql.Identifier(role)))
    try:
        params = db.url_parts(gold_built)
        with psycopg.connect(
            host=params["host"],
            port=params["port"],
            dbname=params["dbname"],
            user=role,
            password=params["password"] or None,
        ) as conn:
            bids = _count_by_org(conn, "fct_bids")
            orgs = {r[0] for r in conn.execute("SELECT org_id FROM gold.kpi_values")}
            denied = conn.execute("SELECT has_table_privilege('gold.fct_bids', 'INSERT')").fetchone()
    finally:
        with db.connect(gold_built, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    assert bids == {"acme": 5}
    assert orgs == {None, "acme"}
    assert denied == (False,)
