"""BI roles on a real Postgres: what `bi_reader` and an organisation role can and cannot read or write."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingestion.bi.access import BiRoles, ensure_bi_roles
from ingestion.bi.tables import KPI_VALUES, TABLES

# roles are cluster-wide: a per-run prefix keeps parallel runs and real roles apart
ROLES = BiRoles(reader=f"bitest{os.getpid()}_reader", org_prefix=f"bitest{os.getpid()}_org_")


@pytest.fixture
def roles(pg, bi_pg_url) -> Iterator[BiRoles]:
    pg.execute(
        """INSERT INTO gold.fct_prices_hourly
                  (zone, ts_utc, market_date, market, currency, price_avg, price_min, price_max, n_obs, org_id)
           VALUES ('NO1', '2024-01-01 00:00+00', '2024-01-01', 'DA', 'EUR', 10, 9, 11, 1, NULL),
                  ('NO1', '2024-01-01 01:00+00', '2024-01-01', 'DA', 'EUR', 20, 19, 21, 1, 'acme'),
                  ('NO1', '2024-01-01 02:00+00', '2024-01-01', 'DA', 'EUR', 30, 29, 31, 1, 'globex')"""
    )
    pg.execute(
        """INSERT INTO gold.kpi_values (kpi_code, grain, zone, org_id, period_start, market_date, value)
           VALUES ('price_spread', 'day', 'NO1', NULL, '2024-01-01 00:00+00', '2024-01-01', 2),
                  ('revenue', 'day', 'NO1', 'globex', '2024-01-01 00:00+00', '2024-01-01', 900)"""
    )
    pg.execute("CREATE TABLE gold.internal_notes (note text)")  # not in the registry: not granted
    yield ROLES
    for role in (ROLES.reader, ROLES.org_role("acme"), ROLES.org_role("globex")):
        pg.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))  # grants in this db
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def connect_as(url: str, role: str) -> psycopg.Connection:
    params = conninfo_to_dict(url)
    params["user"] = role
    params.pop("password", None)
    return psycopg.connect(make_conninfo(**params), autocommit=True)


def test_ensure_bi_roles_is_idempotent_and_comments_every_column(pg, roles):
    first = ensure_bi_roles(pg, ["acme", "globex"], roles=roles)
    second = ensure_bi_roles(pg, ["acme", "globex"], roles=roles)  # roles exist: no error, same result
    assert first == second
    assert set(first.rls_tables) == set(TABLES)  # every gold table of the registry carries org_id
    assert set(first.tables) == set(TABLES)
    comments = dict(
        pg.execute(
            """SELECT c.relname || '.' || a.attname, col_description(c.oid, a.attnum)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
               WHERE n.nspname = 'bi'"""
        ).fetchall()
    )
    expected = {f"{s.bi_view}.{c.bi_name}" for s in TABLES.values() for c in s.columns}
    assert set(comments) == expected
    assert all(comments.values())
    assert (
        "currency per MWh" in pg.execute("SELECT obj_description('bi.prices_hourly'::regclass)").fetchone()[0]
    )


def test_reader_sees_everything_and_writes_nothing(pg, roles, bi_pg_url):
    ensure_bi_roles(pg, ["acme", "globex"], roles=roles)
    with connect_as(bi_pg_url, roles.reader) as conn:
        assert conn.execute("SELECT count(*) FROM gold.fct_prices_hourly").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM bi.prices_hourly").fetchone()[0] == 3
        assert conn.execute("SELECT sum(kpi_value) FROM bi.kpi_values").fetchone()[0] == 902
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO gold.kpi_values (kpi_code) VALUES ('k')")
        conn.execute("SET default_transaction_read_only = off")  # a reader may lift that; grants still hold
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM gold.fct_prices_hourly")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM gold.internal_notes")


def test_org_role_sees_public_and_own_rows_only(pg, roles, bi_pg_url):
    ensure_bi_roles(pg, ["acme", "globex"], roles=roles)
    with connect_as(bi_pg_url, roles.org_role("acme")) as conn:
        rows = conn.execute("SELECT price_avg, org_id FROM gold.fct_prices_hourly ORDER BY ts_utc").fetchall()
        assert rows == [(10.0, None), (20.0, "acme")]
        view = conn.execute("SELECT organisation_id FROM bi.prices_hourly ORDER BY hour_start_utc").fetchall()
        assert view == [(None,), ("acme",)]  # RLS applies through the view (security_invoker)
        # claiming another organisation's id does not widen what the role sees (restrictive binding policy)
        conn.execute("SET optibid.org_id = 'globex'")
        assert (
            conn.execute("SELECT org_id FROM gold.fct_prices_hourly WHERE org_id IS NOT NULL").fetchall()
            == []
        )
        assert conn.execute("SELECT kpi, kpi_value FROM bi.kpi_values").fetchall() == [("price_spread", 2)]
        conn.execute("RESET optibid.org_id")
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE gold.fct_prices_hourly SET price_avg = 0")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO gold.kpi_values (kpi_code) VALUES ('k')")
    with connect_as(bi_pg_url, roles.org_role("globex")) as conn:
        assert conn.execute("SELECT organisation_id FROM bi.prices_hourly ORDER BY 1").fetchall() == [
            ("globex",),
            (None,),
        ]
    assert KPI_VALUES.qualified_pg_name in ensure_bi_roles(pg, [], roles=roles).tables


def test_invalid_org_id_is_rejected(pg):
    with pytest.raises(ValueError, match="organisation id"):
        ensure_bi_roles(pg, ["Acme; DROP ROLE postgres"], roles=ROLES)
