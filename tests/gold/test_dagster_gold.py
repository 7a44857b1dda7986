"""Dagster wiring: silver check -> partitioned dbt models, a broken silver batch that must not reach gold, and
the first build of the KPI table on a cold warehouse.

The silver asset here stands in for the Spark writer (assets/silver.py, owned by the silver layer): it
writes one partition of `silver.market__load` into the real warehouse, like the real asset does.
"""

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg

from assets.shared.partitions import daily_partitions
from assets.shared.resources import WarehouseResource, gold_dbt_resource
from infra import db
from infra.signals import KPI_CHANNEL
from ingestion.cdc.realtime import MinuteKpiWriter
from tests.realtime.tick_rows import bronze_tick_rows

PARTITION = "2024-07-11"


class LoadBatch(dg.Config):
    broken: bool = False


@dg.asset(key=["silver", "market__load"], partitions_def=daily_partitions)
def silver_load_stand_in(
    context: dg.AssetExecutionContext, config: LoadBatch, warehouse: WarehouseResource
) -> None:
    start = datetime(2024, 7, 11, 4, tzinfo=UTC)  # PJM local midnight (EDT)
    rows = [(start + timedelta(hours=h), 500.0) for h in range(24)]
    if config.broken:
        rows[5] = (rows[5][0], -120.0)  # negative load
        del rows[10]  # a missing hour breaks the series
    with warehouse.connect() as conn:
        conn.execute("DELETE FROM silver.market__load WHERE market_date = %s", (context.partition_key,))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO silver.market__load (ts_utc, market_date, zone, interval_minutes, load_mw,
                   org_id, revision, source, ingested_at)
                   VALUES (%s, %s, 'PJM', 60, %s, NULL, 0, 'stand-in', now())""",
                [(ts, context.partition_key, mw) for ts, mw in rows],
            )


def _gold_load(url: str) -> dict[str, list[float]]:
    with db.connect(url) as conn:
        rows = conn.execute(
            "SELECT market_date::text, load_mw_avg FROM gold.fct_load_hourly"
            " WHERE zone = 'PJM' ORDER BY ts_utc"
        ).fetchall()
    found: dict[str, list[float]] = {}
    for day, mw in rows:
        found.setdefault(day, []).append(mw)
    return found


def _materialize(url: str, broken: bool) -> dg.ExecuteInProcessResult:
    from assets import gold, silver

    return dg.materialize(
        [silver_load_stand_in, gold.gold_dbt_partitioned, silver.silver_market__load_expectations],
        selection=dg.AssetSelection.assets(
            ["silver", "market__load"], ["gold", "stg_market__load"], ["gold", "fct_load_hourly"]
        ),
        partition_key=PARTITION,
        resources={"warehouse": WarehouseResource(database_url=url), "dbt": gold_dbt_resource()},
        run_config=dg.RunConfig({"silver__market__load": LoadBatch(broken=broken)}),
        raise_on_error=False,
    )


def _gold_materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
        if e.asset_key and e.asset_key.path[0] == "gold"
    }


def test_blocking_silver_check_keeps_broken_batch_out_of_gold(gold_built: str, settings) -> None:
    url = gold_built
    before = _gold_load(url)
    assert len(before["2024-07-10"]) == 24

    # a stale gold row of the partition (its source rows are gone) must be removed by the window rebuild
    with db.connect(url) as conn:
        conn.execute(
            """INSERT INTO gold.fct_load_hourly
                   (zone, ts_utc, market_date, org_id, load_mw_avg, load_mw_max, n_obs)
               VALUES ('ERCOT', '2024-07-11T12:00:00Z', %s, NULL, 1.0, 1.0, 1)""",
            (PARTITION,),
        )

    good = _materialize(url, broken=False)
    assert good.success
    assert "gold/fct_load_hourly" in _gold_materialized(good)
    after_good = _gold_load(url)
    # the run rebuilt only its partition window: 2024-07-10 is untouched
    assert after_good["2024-07-11"] == [500.0] * 24
    assert after_good["2024-07-10"] == before["2024-07-10"]
    with db.connect(url) as conn:
        stale = conn.execute("SELECT count(*) FROM gold.fct_load_hourly WHERE zone = 'ERCOT'").fetchone()
    assert stale == (0,)
    evaluations = good.get_asset_check_evaluations()
    assert any(e.check_name == "market__load_expectations" and e.passed for e in evaluations)

    broken = _materialize(url, broken=True)
    assert not broken.success
    failed = [e for e in broken.get_asset_check_evaluations() if e.check_name == "market__load_expectations"]
    assert len(failed) == 1 and not failed[0].passed
    meta = failed[0].metadata
    counts = meta["unexpected_counts"].value
    assert counts["expect_column_values_to_be_between(load_mw)"] == 1
    assert counts["expect_column_pair_values_to_be_equal(_gx_step_minutes,interval_minutes)"] == 1
    # the dbt step never ran: no gold materialization, gold still holds the good batch
    assert _gold_materialized(broken) == set()
    assert _gold_load(url)["2024-07-11"] == [500.0] * 24
    assert (settings.reports_dir / "gx_docs" / "index.html").exists()


def test_subset_runs_on_a_cold_warehouse_leave_other_runs_tests_out(database_url: str) -> None:
    """What the automation starts on a fresh warehouse: dimensions, then a few facts, each a subset run. A
    dbt test that also reads a model outside the run (the KPI catalog's test on `kpi_values`, the positions'
    test on bids and trades) must wait for the run that builds that model, not fail this one; a test against a
    dimension or seed that exists runs in the day's run."""
    from assets import gold
    from tests.conftest import private_database
    from tests.gold.silver_fixture import DAY, load_fixture

    for url in private_database(database_url, "optibid_test_gold_cold"):
        load_fixture(url)
        resources = {"warehouse": WarehouseResource(database_url=url), "dbt": gold_dbt_resource()}
        dims = dg.materialize([gold.gold_dbt_unpartitioned], resources=resources, raise_on_error=False)
        assert dims.success
        catalog = dg.materialize(
            [gold.gold_dbt_unpartitioned],
            selection=dg.AssetSelection.assets(["gold", "kpi_catalog"]),
            resources=resources,
            raise_on_error=False,
        )
        assert catalog.success
        bids = dg.materialize(
            [gold.gold_dbt_partitioned],
            selection=dg.AssetSelection.assets(["gold", "stg_trading__bids"], ["gold", "fct_bids"]),
            partition_key=PARTITION,
            resources=resources,
            raise_on_error=False,
        )
        assert bids.success
        assert _gold_materialized(bids) == {"gold/stg_trading__bids", "gold/fct_bids"}
        with db.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gold.fct_positions')").fetchone()[0] is None

        # The KPIs of a day go with its market facts, without the positions that do not exist yet (an
        # optional parent: the real-time minute KPIs need the table as soon as market data exists), and
        # gain the trading KPIs when the automation rebuilds the day after the trading facts.
        # A tick of today that arrives before the table exists is staged only; the first build of the table
        # (for another day) is what makes the real-time writer write and announce it, with no further tick.
        market = [["gold", n] for n in gold.GOLD_TABLES if n.startswith("fct_") and n not in TRADING_FACTS]
        market += [["gold", f"stg_market__{t}"] for t in ("prices", "load", "generation", "weather")]
        now = datetime.now(UTC)
        tick_at = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
        with (
            MinuteKpiWriter(url, repair_check_seconds=0.5) as writer,
            psycopg.connect(url, autocommit=True) as listener,
        ):
            listener.execute(f"LISTEN {KPI_CHANNEL}")
            assert writer.apply(bronze_tick_rows({"PJM": [61.5]}, tick_at, offset=1)).changed == 0
            kpis = dg.materialize(
                [gold.gold_dbt_partitioned],
                selection=dg.AssetSelection.assets(*market, ["gold", "kpi_values"]),
                partition_key=DAY.isoformat(),
                resources=resources,
                raise_on_error=False,
            )
            assert kpis.success
            # Tests against a dimension or seed built by the reference run do run in the day's subset run.
            evaluated = {(e.asset_key.path[-1], e.check_name): e.passed for e in kpis.get_asset_check_evaluations()}
            assert evaluated[("fct_prices_hourly", "relationships_fct_prices_hourly_zone__zone__ref_dim_zone_")]
            assert evaluated[("kpi_values", "relationships_kpi_values_kpi_code__kpi_code__ref_kpi_catalog_")]
            pushed = None
            for note in listener.notifies(timeout=30):
                payload = json.loads(note.payload)
                if payload["zone"] == "PJM" and _covers(payload, tick_at):
                    pushed = payload
                    break
        assert pushed is not None, "the staged tick was announced once the table existed"
        assert pushed["grain"] == "minute"
        with db.connect(url) as conn:
            served = conn.execute(
                """SELECT value FROM gold.kpi_values
                   WHERE kpi_code = 'price_avg' AND grain = 'minute' AND zone = 'PJM' AND period_start = %s""",
                (tick_at,),
            ).fetchall()
        assert served == [(61.5,)]
        assert "price_avg" in _kpi_codes(url, DAY)
        assert "revenue" not in _kpi_codes(url, DAY)
        trading = dg.materialize(
            [gold.gold_dbt_partitioned],
            selection=dg.AssetSelection.assets(
                *(["gold", f"stg_trading__{t}"] for t in ("bids", "trades")),
                *(["gold", f] for f in TRADING_FACTS),
                ["gold", "kpi_values"],
            ),
            partition_key=DAY.isoformat(),
            resources=resources,
            raise_on_error=False,
        )
        assert trading.success
        assert {"price_avg", "bid_acceptance_rate", "revenue", "net_position"} <= _kpi_codes(url, DAY)


TRADING_FACTS = {"fct_bids", "fct_trades", "fct_positions"}


def _covers(payload: dict, ts: datetime) -> bool:
    return datetime.fromisoformat(payload["period_from"]) <= ts <= datetime.fromisoformat(payload["period_to"])


def _kpi_codes(url: str, day: date) -> set[str]:
    with db.connect(url) as conn:
        rows = conn.execute("SELECT DISTINCT kpi_code FROM gold.kpi_values WHERE market_date = %s", (day,))
        return {r[0] for r in rows}
