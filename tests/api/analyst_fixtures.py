"""Fixture rows of the analyst endpoints (routers/trading.py, routers/model_monitoring.py), seeded by the API
tests' conftest, and the real app served over a real socket (`serve_api`).

The trading facts are dbt marts (dbt_project/models/marts/fct_bids.sql, fct_trades.sql, fct_positions.sql):
created here with those models' columns and the project's RLS policy, as conftest does for the other gold
facts. The model-monitoring tables come from the migrations and are written through their real writers
(`ml.forecasting.warehouse`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pandas as pd

TRADING_DDL = """
CREATE TABLE IF NOT EXISTS gold.fct_bids (bid_id text NOT NULL, org_id text NOT NULL, asset_id text,
    zone text, delivery_start timestamptz, market_date date, side text, price double precision,
    quantity_mw double precision, status text, is_accepted boolean, is_decided boolean,
    cleared_quantity_mw double precision, cleared_price double precision, cash_flow double precision,
    currency text, updated_at timestamptz);
CREATE TABLE IF NOT EXISTS gold.fct_trades (trade_id text NOT NULL, org_id text NOT NULL, bid_id text,
    zone text, delivery_start timestamptz, market_date date, side text, price double precision,
    quantity_mw double precision, signed_quantity_mw double precision, cash_flow double precision,
    currency text, counterparty text, traded_at timestamptz);
CREATE TABLE IF NOT EXISTS gold.fct_positions (org_id text NOT NULL, zone text, delivery_start timestamptz,
    market_date date, bought_mwh double precision, sold_mwh double precision,
    net_position_mwh double precision, cash_flow double precision);
"""
TRADING_TABLES = ("gold.fct_bids", "gold.fct_trades", "gold.fct_positions")
BID_HOURS = 24  # bids per organization, one per delivery hour of the first day
STATUSES = ("accepted", "partially_accepted", "rejected", "submitted")


def bid_rows(org: str, n: int, day0: datetime) -> list[tuple]:
    """Org `org`'s bids (the n-th organization bids n+1 MW per hour): sells on even hours, buys on odd."""
    rows = []
    for h in range(BID_HOURS):
        start = day0 + timedelta(hours=h)
        side = "sell" if h % 2 == 0 else "buy"
        status = STATUSES[h % len(STATUSES)]
        quantity = 1.0 + n
        accepted = status in ("accepted", "partially_accepted")
        cleared = (quantity if status == "accepted" else quantity / 2) if accepted else 0.0
        price = 30.0 + h
        cash = cleared * price * (1 if side == "sell" else -1)
        rows.append(
            (
                f"{org}_bid_{h:02d}",
                org,
                f"{org}_bat",
                "PJM",
                start,
                start.date(),
                side,
                price,
                quantity,
                status,
                accepted,
                status != "submitted",
                cleared,
                price if accepted else None,
                cash,
                "USD",
                start,
            )
        )
    return rows


def trade_rows(org: str, n: int, day0: datetime) -> list[tuple]:
    """One trade per accepted bid and two standalone trades with a counterparty."""
    rows = []
    for bid in bid_rows(org, n, day0):
        bid_id, _, _, zone, start, market_date, side, price, _, _, accepted, _, cleared = bid[:13]
        if accepted:
            sign = 1 if side == "buy" else -1
            rows.append(
                (
                    f"{bid_id}_trade",
                    org,
                    bid_id,
                    zone,
                    start,
                    market_date,
                    side,
                    price,
                    cleared,
                    sign * cleared,
                    -sign * cleared * price,
                    "USD",
                    "exchange",
                    start,
                )
            )
    for k in range(2):
        start = day0 + timedelta(hours=30 + k)
        rows.append(
            (
                f"{org}_otc_{k}",
                org,
                None,
                "PJM",
                start,
                start.date(),
                "buy",
                40.0,
                2.0,
                2.0,
                -80.0,
                "USD",
                f"cp_{k}",
                start,
            )
        )
    return rows


def position_rows(org: str, n: int, day0: datetime) -> list[tuple]:
    """Net positions as fct_positions.sql derives them: cleared bids plus trades that execute no bid."""
    legs = [(b[3], b[4], b[6], b[12], b[14]) for b in bid_rows(org, n, day0) if b[10]]
    legs += [(t[3], t[4], t[6], t[8], t[10]) for t in trade_rows(org, n, day0) if t[2] is None]
    frame = pd.DataFrame(legs, columns=["zone", "delivery_start", "side", "quantity", "cash_flow"])
    frame["bought"] = frame["quantity"].where(frame["side"] == "buy", 0.0)
    frame["sold"] = frame["quantity"].where(frame["side"] == "sell", 0.0)
    grouped = frame.groupby(["zone", "delivery_start"], as_index=False)[["bought", "sold", "cash_flow"]].sum()
    return [
        (
            org,
            r.zone,
            r.delivery_start.to_pydatetime(),
            r.delivery_start.date(),
            r.bought,
            r.sold,
            r.bought - r.sold,
            r.cash_flow,
        )
        for r in grouped.itertuples()
    ]


def seed_analyst_tables(conn, orgs: tuple[str, ...], day0: datetime) -> None:
    from ml.forecasting.warehouse import (
        insert_backtest,
        insert_model_selection,
        replace_anomalies,
        replace_drift_summaries,
    )

    conn.execute(TRADING_DDL)
    for table in TRADING_TABLES:
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        conn.execute(f"DROP POLICY IF EXISTS org_isolation ON {table}")
        conn.execute(f"""CREATE POLICY org_isolation ON {table}
                         USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true))""")
        conn.execute(f"DROP POLICY IF EXISTS owner_unscoped ON {table}")
        conn.execute(f"""CREATE POLICY owner_unscoped ON {table} TO CURRENT_USER
                         USING (coalesce(current_setting('optibid.org_id', true), '') = '')""")
        conn.execute(f"GRANT SELECT ON {table} TO optibid_api")
    with conn.cursor() as cur:
        for n, org in enumerate(orgs):
            cur.executemany(f"INSERT INTO gold.fct_bids VALUES ({', '.join(['%s'] * 17)})", bid_rows(org, n, day0))
            cur.executemany(f"INSERT INTO gold.fct_trades VALUES ({', '.join(['%s'] * 14)})", trade_rows(org, n, day0))
            cur.executemany(
                f"INSERT INTO gold.fct_positions VALUES ({', '.join(['%s'] * 8)})", position_rows(org, n, day0)
            )

    anomalies = pd.DataFrame(
        {
            "zone": ["PJM", "PJM", "NP"],
            "ts_utc": [day0 + timedelta(hours=h) for h in (5, 17, 9)],
            "target": ["price", "load", "price"],
            "kind": ["spike", "level_shift", "spike"],
            "score": [6.5, 4.2, 8.1],
            "value": [310.0, 12000.0, 95.0],
            "expected": [35.0, 9000.0, 40.0],
            "method": ["forecast residual", "deseasonalised", "forecast residual"],
            "market_date": [day0.date()] * 3,
        }
    )
    replace_anomalies(conn, day0.date(), ["price", "load"], anomalies)
    for week, zone in ((0, "PJM"), (0, "NP"), (1, "PJM")):
        run_id = f"bt_week{week}"
        window = ((day0 - timedelta(days=35 - 7 * week)).date(), (day0 - timedelta(days=7 - 7 * week)).date())
        champion = "LEAR" if week == 0 else "ensemble"
        insert_backtest(
            conn,
            run_id,
            zone,
            "price",
            window,
            ["ensemble", "LEAR", "seasonal_naive"],
            {
                "LEAR": {"mae": 4.0 + week, "rmae": 0.8},
                "ensemble": {"mae": 4.5 - week, "rmae": 0.85},
                "seasonal_naive": {"mae": 6.0, "rmae": 1.0},
            },
            f"mlflow_{run_id}",
            12.5,
        )
        insert_model_selection(conn, zone, "price", champion, run_id, "mae", 4.0, f"mlflow_{run_id}", str(week + 1))
        conn.commit()  # selected_at is the transaction's now(): one selection per zone and transaction
    summaries = pd.DataFrame(
        {
            "unique_id": ["PJM", "NP"],
            "drift_share": [0.75, 0.0],
            "n_drifted": [3, 0],
            "n_columns": [4, 3],
            "dataset_drift": [True, False],
            "target_drift": [True, False],
            "error_drift": [True, None],
            "drifted_columns": ["abs_error,load,y", ""],
            "report_path": ["/reports/drift_PJM.html", "/reports/drift_NP.html"],
        }
    )
    end = day0 + timedelta(days=1)
    replace_drift_summaries(conn, summaries, end - timedelta(days=35), end - timedelta(days=7), end)


def serve_api(api_settings, options) -> Iterator[tuple[object, str]]:
    """(app, base URL) of the real app served by uvicorn on a free port in a thread, for clients that speak
    real HTTP and WebSocket (the typed client, gzip on the wire)."""
    import uvicorn

    from infra.processes import free_port
    from serving_api.app import create_app

    app = create_app(api_settings, options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
