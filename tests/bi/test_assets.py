"""The export assets end to end: the real dbt gold layer (built from the gold tests' silver fixture in a
database of this module's own) replicated to a real ClickHouse by `dg.materialize`, and `["bi", "access"]`
re-creating the bi.* views after dbt rebuilt a gold table.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from assets.exports import bi_access, clickhouse_export_checks, clickhouse_exports
from assets.shared.resources import ClickHouseResource, WarehouseResource
from ingestion.bi.clickhouse import duplicate_key_count, row_count_parity
from ingestion.bi.tables import FCT_PRICES_5MIN, KPI_VALUES, TABLES
from tests.gold.silver_fixture import DAY, load_fixture

PARTITION = DAY.isoformat()
PREFIX = f"biassets{os.getpid()}_"


@pytest.fixture(scope="module")
def gold_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private migrated database with the gold tests' silver rows and the dbt models the exports read."""
    from infra import db
    from infra.dbt import run_dbt

    name = f"optibid_bi_assets_{os.getpid()}"
    url = db.create_database(database_url, name, drop_existing=True)
    db.migrate(url)
    load_fixture(url)
    target = tmp_path_factory.mktemp("dbt_target_bi")
    # only what the exported tables need (seeds, staging, dims, facts, kpi_values); no dbt tests: tests/gold
    run_dbt(
        ["build", "--select", "+kpi_values", "+fct_prices_5min", "--exclude", "resource_type:test"],
        database_url=url,
        target_path=target,
    )
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for role in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (PREFIX.replace("_", "\\_") + "%",)
        ).fetchall():
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role[0])))


@pytest.fixture
def ch_url(clickhouse_url: str) -> Iterator[str]:
    """The URL of a fresh ClickHouse database, dropped afterwards."""
    from clickhouse_driver import Client

    admin = Client.from_url(clickhouse_url)
    name = f"bi_assets_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(clickhouse_url)._replace(path=f"/{name}").geturl()
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


def materialize_exports(gold_url: str, ch_url: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*clickhouse_exports, *clickhouse_export_checks],
        partition_key=PARTITION,
        resources={
            "warehouse": WarehouseResource(database_url=gold_url),
            "clickhouse": ClickHouseResource(url=ch_url),
        },
        raise_on_error=False,
    )


def utc_naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def pg_rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(query, (DAY,)).fetchall()]


def test_export_assets_replicate_the_dbt_gold_day_with_parity(gold_url, ch_url):
    from clickhouse_driver import Client

    result = materialize_exports(gold_url, ch_url)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_key for e in evaluations} == {
        dg.AssetKey(["clickhouse", s.ch_table]) for s in TABLES.values()
    }
    assert all(e.passed for e in evaluations)
    assert all(e.metadata["duplicate_keys"].value == 0 for e in evaluations)
    loaded = {
        m.asset_key.path[-1]: m.metadata["rows_loaded"].value
        for asset in clickhouse_exports
        for m in result.asset_materializations_for_node(asset.op.name)
    }
    assert set(loaded) == {s.ch_table for s in TABLES.values()} and all(n > 0 for n in loaded.values())

    ch = Client.from_url(ch_url)
    try:
        with psycopg.connect(gold_url, autocommit=True) as pg:
            counts = {s.pg_table: row_count_parity(pg, ch, s, DAY) for s in TABLES.values()}
            # 5-minute prices of the fixture day: three zone prices (node NULL) and one nodal price
            assert all(pg_n == ch_n > 0 for pg_n, ch_n in counts.values()), counts
            assert counts["fct_prices_5min"] == (4, 4)
            assert ch.execute("SELECT count() FROM fct_prices_5min WHERE isNull(node)")[0][0] == 3
            assert ch.execute("SELECT count() FROM fct_prices_hourly WHERE org_id = 'acme'")[0][0] == 1

            want = pg_rows(
                pg,
                "SELECT zone, market, currency, org_id, ts_utc, price_avg FROM gold.fct_prices_hourly "
                "WHERE market_date = %s ORDER BY zone, market, coalesce(org_id, ''), ts_utc",
            )
            got = ch.execute(
                "SELECT zone, market, currency, org_id, ts_utc, price_avg FROM fct_prices_hourly "
                "WHERE market_date = %(d)s ORDER BY zone, market, ifNull(org_id, ''), ts_utc",
                {"d": DAY},
            )
            assert len(want) > 24
            assert [(*r[:4], utc_naive(r[4]), r[5]) for r in want] == [
                (*r[:4], utc_naive(r[4]), r[5]) for r in got
            ]
            kpis = pg_rows(
                pg,
                "SELECT kpi_code, grain, zone, org_id, value FROM gold.kpi_values WHERE market_date = %s "
                "ORDER BY kpi_code, grain, zone, coalesce(org_id, ''), period_start",
            )
            assert kpis == [
                tuple(r)
                for r in ch.execute(
                    "SELECT kpi_code, grain, zone, org_id, value FROM kpi_values WHERE market_date = %(d)s "
                    "ORDER BY kpi_code, grain, zone, ifNull(org_id, ''), period_start",
                    {"d": DAY},
                )
            ]

            # the day is rebuilt upstream (new values, a row fewer): re-materializing replaces it
            pg.execute(
                "UPDATE gold.fct_prices_hourly SET price_avg = price_avg + 1000 WHERE market_date = %s",
                (DAY,),
            )
            pg.execute("DELETE FROM gold.fct_prices_5min WHERE node IS NOT NULL AND market_date = %s", (DAY,))
            again = materialize_exports(gold_url, ch_url)
            assert again.success and all(e.passed for e in again.get_asset_check_evaluations())
            for spec in TABLES.values():
                assert duplicate_key_count(ch, spec, DAY) == 0
                pg_n, ch_n = row_count_parity(pg, ch, spec, DAY)
                assert pg_n == ch_n == counts[spec.pg_table][0] - (spec is FCT_PRICES_5MIN)
            prices = ch.execute(
                "SELECT min(price_avg) FROM fct_prices_hourly WHERE market_date = %(d)s", {"d": DAY}
            )
            assert prices[0][0] > 900
            updated = ch.execute(
                "SELECT price_avg FROM fct_prices_hourly WHERE market_date = %(d)s ORDER BY price_avg",
                {"d": DAY},
            )
            assert [p for (p,) in updated] == pytest.approx(
                [w[5] + 1000 for w in sorted(want, key=lambda r: r[5])]
            )
    finally:
        ch.disconnect()


def test_export_of_an_archived_day_replicates_it_from_the_cold_tier(gold_url, ch_url, settings):
    """Retention archives the gold day and its exports are re-materialized (a backfill): ClickHouse keeps every
    row as it was and the blocking parity check compares with the archive (not 0 == 0)."""
    from clickhouse_driver import Client

    from infra.retention import archive_day, policy_for, restore_day

    def snapshot(ch) -> dict[str, list[tuple]]:
        return {
            s.ch_table: ch.execute(
                f"SELECT {', '.join(s.column_names)} FROM {s.ch_table} WHERE market_date = %(d)s "
                f"ORDER BY {', '.join(s.grain_key)}",
                {"d": DAY},
            )
            for s in TABLES.values()
        }

    assert materialize_exports(gold_url, ch_url).success
    ch = Client.from_url(ch_url)
    archive_uri = settings.resolved_archive_uri  # the assets read get_settings(): the same location
    archived = []
    try:
        before = snapshot(ch)
        for spec in TABLES.values():
            outcome = archive_day(gold_url, archive_uri, policy_for(settings, spec.qualified_pg_name), DAY)
            assert outcome.rows == len(before[spec.ch_table]) > 0
            archived.append(spec)
        again = materialize_exports(gold_url, ch_url)
        assert again.success
        evaluations = again.get_asset_check_evaluations()
        assert len(evaluations) == len(TABLES) and all(e.passed for e in evaluations)
        assert all(e.metadata["pg_count"].value == e.metadata["ch_count"].value > 0 for e in evaluations)
        sources = {
            m.asset_key.path[-1]: m.metadata["source"].value
            for asset in clickhouse_exports
            for m in again.asset_materializations_for_node(asset.op.name)
        }
        assert sources == {s.ch_table: "archive" for s in TABLES.values()}
        assert snapshot(ch) == before
    finally:
        ch.disconnect()
        for spec in archived:  # the module's other tests read the day hot
            restore_day(gold_url, archive_uri, spec.qualified_pg_name, DAY)


def test_parity_check_fails_when_clickhouse_has_extra_rows(gold_url, ch_url):
    from clickhouse_driver import Client

    assert materialize_exports(gold_url, ch_url).success
    ch = Client.from_url(ch_url)
    try:  # someone appended the day again behind the export's back
        ch.execute("INSERT INTO kpi_values SELECT * FROM kpi_values WHERE market_date = %(d)s", {"d": DAY})
    finally:
        ch.disconnect()
    index = list(TABLES).index(KPI_VALUES.qualified_pg_name)
    check = clickhouse_export_checks[index]
    # the check alone (a check-only run: dagster takes its partition from the run tag)
    result = dg.materialize(
        [clickhouse_exports[index], check],
        selection=dg.AssetSelection.checks(check),
        tags={"dagster/partition": PARTITION},
        resources={
            "warehouse": WarehouseResource(database_url=gold_url),
            "clickhouse": ClickHouseResource(url=ch_url),
        },
        raise_on_error=False,
    )
    assert not result.success  # blocking check
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["duplicate_keys"].value == evaluation.metadata["pg_count"].value > 0
    assert evaluation.metadata["ch_count"].value == 2 * evaluation.metadata["pg_count"].value


def test_bi_access_asset_recreates_views_after_dbt_rebuilds_gold(gold_url, tmp_path: Path):
    from infra.dbt import run_dbt

    config = {
        "ops": {"bi__access": {"config": {"reader_role": f"{PREFIX}reader", "org_role_prefix": PREFIX}}}
    }
    resources = {"warehouse": WarehouseResource(database_url=gold_url)}

    def views(conn: psycopg.Connection) -> set[str]:
        return {
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.views WHERE table_schema = 'bi'")
        }

    first = dg.materialize([bi_access], resources=resources, run_config=config)
    md = first.asset_materializations_for_node("bi__access")[0].metadata
    assert md["missing_tables"].value == []
    assert set(md["roles"].value) == {
        f"{PREFIX}reader",
        f"{PREFIX}acme",
        f"{PREFIX}market",
        f"{PREFIX}voltindia",
    }
    with psycopg.connect(gold_url, autocommit=True) as conn:
        assert views(conn) == {s.bi_view for s in TABLES.values()}
        comment = conn.execute("SELECT obj_description('bi.prices_hourly'::regclass)").fetchone()[0]
        assert "currency per MWh" in comment and "gold.fct_prices_hourly" in comment

    # dbt rebuilds a table (full refresh): its bi view, grants and policies are gone ...
    run_dbt(
        ["run", "--select", "fct_prices_hourly", "--full-refresh"],
        database_url=gold_url,
        target_path=tmp_path,
    )
    with psycopg.connect(gold_url, autocommit=True) as conn:
        assert "prices_hourly" not in views(conn)
    # ... and materializing bi/access after gold brings them back, org isolation included
    dg.materialize([bi_access], resources=resources, run_config=config)
    with psycopg.connect(gold_url, autocommit=True) as conn:
        assert views(conn) == {s.bi_view for s in TABLES.values()}
        assert conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'gold.fct_prices_hourly'::regclass"
        ).fetchone()[0]
    params = psycopg.conninfo.conninfo_to_dict(gold_url)
    params.update(user=f"{PREFIX}voltindia")
    params.pop("password", None)
    with psycopg.connect(psycopg.conninfo.make_conninfo(**params)) as conn:
        orgs = {r[0] for r in conn.execute("SELECT DISTINCT organisation_id FROM bi.prices_hourly")}
        assert orgs == {None}  # acme's private ERCOT hour is not visible to voltindia
    assert set(md["rls_tables"].value) == set(TABLES)


def test_export_fails_with_the_install_hint_without_clickhouse(gold_url, monkeypatch, tmp_path):
    """No CLICKHOUSE_URL and no server binary: a clear failure naming the packages, not a driver traceback."""
    from infra.clickhouse import INSTALL_HINT
    from infra.settings import get_settings

    if get_settings().clickhouse_url:
        pytest.skip("CLICKHOUSE_URL is set: the export never looks for a local binary")
    monkeypatch.setenv("PATH", str(tmp_path))  # no clickhouse-server / clickhouse on PATH
    result = dg.materialize(
        clickhouse_exports[:1],
        partition_key=PARTITION,
        resources={"warehouse": WarehouseResource(database_url=gold_url), "clickhouse": ClickHouseResource()},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    info = failure.step_failure_data.user_failure_data
    assert info is not None and info.description == INSTALL_HINT


def test_registry_matches_the_dbt_gold_tables(gold_url):
    """Every column of the dbt-built tables is in the registry with its Postgres type, and nothing more."""
    aliases = {"float8": "double precision", "int8": "bigint", "timestamptz": "timestamp with time zone"}
    with psycopg.connect(gold_url, autocommit=True) as conn:
        for spec in TABLES.values():
            built = conn.execute(
                "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (spec.pg_schema, spec.pg_table),
            ).fetchall()
            assert [(n, t) for n, t, _ in built] == [
                (c.name, aliases.get(c.pg_type, c.pg_type)) for c in spec.columns
            ]
            # public rows (org_id) and zone prices (node) are NULL in dbt: Nullable in ClickHouse
            for name in ("org_id", "node"):
                if name in spec.column_names:
                    assert spec.column(name).nullable, (spec.pg_table, name)
