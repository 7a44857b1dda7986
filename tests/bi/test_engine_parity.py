"""The ClickHouse server (Debian's 18.16) and the current ClickHouse engine (chdb) given the same DDL, the
same replicated days and the same analytics queries on the same data must end up with the same objects,
the same rows and the same answers.

The replication and analytics tests run on each engine against their own oracles (Postgres, pandas); this
module compares the engines with each other, where an oracle could hide a difference both share with it.
"""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd

from ingestion.bi.analytics import price_anomalies, realtime_kpis, zone_price_correlations
from ingestion.bi.clickhouse import ensure_clickhouse_schema, replicate_partition, rollup_select_sql
from ingestion.bi.tables import FCT_PRICES_5MIN, FCT_PRICES_HOURLY, KPI_VALUES, TABLES
from tests.bi.test_analytics import START, hourly_frame, insert_frame
from tests.bi.test_clickhouse_replication import D1, D2, D3, insert_hourly

# The oldest release the SQL must still run on, and where current releases start (chdb follows them).
CURRENT_MAJOR = 24


def canonical(rows: list[tuple]) -> list[tuple]:
    """Rows in a stable order, floats rounded to 12 significant digits (the engines may sum in another order)."""

    def value(v):
        if isinstance(v, float) and not math.isnan(v):
            return float(f"{v:.12g}")
        if isinstance(v, list):
            return tuple(value(x) for x in v)
        return v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def table_contents(client, table: str) -> list[tuple]:
    return canonical(client.execute(f"SELECT * FROM {table}"))


def test_both_engines_are_the_versions_we_mean(ch_server, ch_chdb) -> None:
    server, current = ch_server.execute("SELECT version()")[0][0], ch_chdb.version()
    print(f"ClickHouse server {server}, chdb engine {current}")
    assert int(current.split(".")[0]) >= CURRENT_MAJOR
    assert server != current


def test_same_ddl_makes_the_same_tables(ch_server, ch_chdb) -> None:
    layout = {}
    for name, client in (("server", ch_server), ("chdb", ch_chdb)):
        ensure_clickhouse_schema(client)
        tables = client.execute(
            "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name"
        )
        columns = client.execute(
            "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() ORDER BY table, name"
        )
        layout[name] = (tables, columns)
    assert layout["server"] == layout["chdb"]
    expected = {spec.ch_table for spec in TABLES.values()} | {r.name for s in TABLES.values() for r in s.rollups}
    assert {name for name, engine in layout["chdb"][0] if engine != "MaterializedView"} == expected


def test_same_replication_gives_the_same_rows_and_rollups(pg, ch_server, ch_chdb) -> None:
    insert_hourly(pg, D1, ["NO1", "NO2"], 10.0)
    insert_hourly(pg, D2, ["NO1", "NO2"], 20.0, org_id="acme")
    insert_hourly(pg, D3, ["NO1"], 30.0)
    pg.execute(
        """INSERT INTO gold.fct_prices_5min (node, zone, ts_utc, market_date, market, currency, org_id, price)
           SELECT CASE WHEN n = 0 THEN NULL ELSE 'N' || n END, 'Z' || (n %% 2), ts, %(day)s, 'RT', 'USD', NULL,
                  n * 10 + extract(minute FROM ts)
           FROM generate_series(0, 4) n,
                generate_series(%(day)s::timestamp AT TIME ZONE 'UTC',
                                %(day)s::timestamp AT TIME ZONE 'UTC' + interval '2 hours',
                                interval '5 minutes') ts""",
        {"day": D3},
    )
    pg.execute(
        """INSERT INTO gold.kpi_values (kpi_code, grain, zone, org_id, period_start, market_date, value)
           VALUES ('price_spread', 'day', 'PJM', NULL, '2024-03-30 04:00+00', %s, 3.5),
                  ('revenue', 'day', 'PJM', 'acme', '2024-03-30 04:00+00', %s, 1200)""",
        (D1, D1),
    )
    results = {}
    for name, client in (("server", ch_server), ("chdb", ch_chdb)):
        for spec, day in [(FCT_PRICES_HOURLY, D1), (FCT_PRICES_HOURLY, D2), (FCT_PRICES_HOURLY, D3)]:
            replicate_partition(pg, client, spec, day)
        replicate_partition(pg, client, FCT_PRICES_5MIN, D3)
        replicate_partition(pg, client, KPI_VALUES, D1)
        results[name] = [replicate_partition(pg, client, FCT_PRICES_HOURLY, D2)]  # a re-materialised day
    # The day is rebuilt upstream, then replicated again on both.
    pg.execute("DELETE FROM gold.fct_prices_hourly WHERE market_date = %s", (D2,))
    insert_hourly(pg, D2, ["NO2", "SE3", "DK1"], 50.0)
    for name, client in (("server", ch_server), ("chdb", ch_chdb)):
        results[name].append(replicate_partition(pg, client, FCT_PRICES_HOURLY, D2))

    counts = {
        name: [(r.rows_loaded, r.rows_in_month, r.pg_count, r.ch_count) for r in result]
        for name, result in results.items()
    }
    assert counts["server"] == counts["chdb"] == [(48, 96, 48, 48), (72, 120, 72, 72)]  # D1 + D2 in March
    for spec in (FCT_PRICES_HOURLY, FCT_PRICES_5MIN, KPI_VALUES):
        server = table_contents(ch_server, spec.ch_table)
        assert server, spec.ch_table
        assert server == table_contents(ch_chdb, spec.ch_table), spec.ch_table
        for rollup in spec.rollups:
            rolled = table_contents(ch_server, f"({rollup_select_sql(rollup)})")
            assert rolled, rollup.name
            assert rolled == table_contents(ch_chdb, f"({rollup_select_sql(rollup)})"), rollup.name


def test_same_analytics_give_the_same_answers(ch_server, ch_chdb) -> None:
    hourly = hourly_frame()
    five_min = pd.DataFrame(
        [
            (node, zone, t, t.date(), "RT", "USD", None, 40.0 + 3 * i + (k % 7))
            for i, (node, zone) in enumerate([("N1", "Z0"), ("N2", "Z0"), (None, "Z0"), ("N3", "Z1")])
            for k, t in enumerate(pd.date_range("2024-06-01 23:00", periods=24, freq="5min", tz="UTC"))
        ],
        columns=list(FCT_PRICES_5MIN.column_names),
    )
    now = dt.datetime(2024, 6, 2, 0, 55, tzinfo=dt.UTC)
    answers = {}
    for name, client in (("server", ch_server), ("chdb", ch_chdb)):
        insert_frame(client, FCT_PRICES_HOURLY, hourly)
        insert_frame(client, FCT_PRICES_5MIN, five_min)
        window = {"start": START + dt.timedelta(days=2), "end": START + dt.timedelta(days=9)}
        answers[name] = {
            "anomalies": price_anomalies(client, **window, window_hours=48, z_threshold=0, min_points=24),
            "anomalies_acme": price_anomalies(client, **window, org_id="acme", window_hours=48, z_threshold=2),
            "correlations": zone_price_correlations(
                client, start_day=dt.date(2024, 5, 4), end_day=dt.date(2024, 5, 10), window_days=3, org_id="acme"
            ),
            "realtime": realtime_kpis(client, minutes=60, now=now),
        }
    for what, server in answers["server"].items():
        chdb = answers["chdb"][what]
        assert server, what
        assert [sorted(row) for row in server] == [sorted(row) for row in chdb], what  # same columns
        assert canonical([tuple(row.values()) for row in server]) == canonical([tuple(row.values()) for row in chdb]), (
            what
        )
