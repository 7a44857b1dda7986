"""Every read ML makes of gold, and of the tables gold is keyed by: the hourly facts, the published forecasts,
the optimization result tables, the silver reference zones and assets, and the champions in
ml.model_selection.

What belongs here: SQL that reads (plain psycopg 3 connections in, pandas frames or plain records out), for
the forecasting and optimization libraries, their Dagster assets and the API. What does not: writes (each
library's `warehouse` module: `ml.forecasting.warehouse`, `ml.optimization.warehouse`) and any modelling on
what was read (`ml.forecasting.daily`, `ml.optimization.delivery_day`). It imports no other ML module but
`ml.frames`, so both libraries can stand on it. No Dagster here.

Facts are the public rows (`org_id IS NULL`, never an organization's upload) of gold.fct_prices_hourly
(`price_avg`) and gold.fct_load_hourly (`load_mw_avg`, or the contract's short form `load_mw`). Of a zone's
markets the day-ahead market `DA` is read when the zone has one, else its first market alphabetically, so a
zone never mixes day-ahead and real-time prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from ml.frames import ID_COL, INTERVAL_COLUMNS, TARGET_COL, TIME_COL

TARGETS = ("price", "load")
# target -> (fact table, value columns in order of preference); dbt names the load column load_mw_avg.
FACT_SOURCES = {
    "price": ("gold.fct_prices_hourly", ("price_avg",)),
    "load": ("gold.fct_load_hourly", ("load_mw_avg", "load_mw")),
}
REFERENCE_ASSET_COLUMNS = [
    "asset_id",
    "org_id",
    "zone",
    "name",
    "technology",
    "capacity_mw",
    "energy_mwh",
    "marginal_cost",
]
FORECAST_RUN_COLUMNS = ["run_id", "model", "ts_utc", "y_hat", "q10", "q50", "q90", "lo80", "hi80", "created_at"]


class MissingFactsError(LookupError):
    """A gold fact table ML reads does not exist or lacks its value column (dbt has not built it yet)."""


def _table(qualified: str) -> sql.Identifier:
    return sql.Identifier(*qualified.split("."))


# --- catalogue and reference ----------------------------------------------------------------------------


def table_columns(conn: psycopg.Connection, qualified: str) -> set[str]:
    """Column names of `schema.table` (empty when the table does not exist)."""
    schema, name = qualified.split(".")
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, name),
    ).fetchall()
    return {r[0] for r in rows}


def zone_timezones(conn: psycopg.Connection) -> dict[str, str]:
    """zone -> IANA timezone from silver.ref__zones."""
    return dict(conn.execute("SELECT zone, timezone FROM silver.ref__zones").fetchall())


def reference_assets(conn: psycopg.Connection, technologies: Iterable[str]) -> pd.DataFrame:
    """silver.ref__assets rows of the given technologies (REFERENCE_ASSET_COLUMNS), by org, zone and asset."""
    rows = conn.execute(
        """SELECT asset_id, org_id, zone, name, technology, capacity_mw, energy_mwh, marginal_cost
           FROM silver.ref__assets WHERE technology = ANY(%s) ORDER BY org_id, zone, asset_id""",
        (list(technologies),),
    ).fetchall()
    return pd.DataFrame(rows, columns=REFERENCE_ASSET_COLUMNS)


# --- gold facts -----------------------------------------------------------------------------------------


def fact_frame(
    conn: psycopg.Connection,
    target: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long frame (unique_id = zone, ds, y) of the public hourly fact of `target` in [start, end).

    One market per zone (see the module docstring). Raises MissingFactsError without the table.
    """
    table, candidates = FACT_SOURCES[target]
    columns = table_columns(conn, table)
    value = next((c for c in candidates if c in columns), None)
    if value is None:
        raise MissingFactsError(
            f"{table} does not exist or lacks {' / '.join(candidates)}: materialize the gold dbt models first"
        )
    where = [
        sql.SQL("ts_utc >= %s"),
        sql.SQL("ts_utc < %s"),
        sql.SQL("{v} IS NOT NULL").format(v=sql.Identifier(value)),
    ]
    params: list[Any] = [pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()]
    if "org_id" in columns:
        where.append(sql.SQL("org_id IS NULL"))
    if zones is not None:
        where.append(sql.SQL("zone = ANY(%s)"))
        params.append(list(zones))
    market = sql.Identifier("market") if "market" in columns else sql.Literal("")
    query = sql.SQL("SELECT zone, ts_utc, {m}, avg({v}) FROM {t} WHERE {w} GROUP BY 1, 2, 3").format(
        m=market, v=sql.Identifier(value), t=_table(table), w=sql.SQL(" AND ").join(where)
    )
    rows = conn.execute(query, params).fetchall()
    frame = pd.DataFrame(rows, columns=[ID_COL, TIME_COL, "market", TARGET_COL])
    if frame.empty:
        return pd.DataFrame(
            {
                ID_COL: pd.Series(dtype=str),
                TIME_COL: pd.Series(dtype="datetime64[ns, UTC]"),
                TARGET_COL: pd.Series(dtype=float),
            }
        )
    chosen = frame.groupby(ID_COL)["market"].agg(lambda m: "DA" if "DA" in set(m) else sorted(set(m))[0])
    frame = frame[frame["market"] == frame[ID_COL].map(chosen)]
    frame = frame.assign(
        **{
            TIME_COL: pd.to_datetime(frame[TIME_COL], utc=True).astype("datetime64[ns, UTC]"),
            TARGET_COL: frame[TARGET_COL].astype(float),
        }
    )
    return frame[[ID_COL, TIME_COL, TARGET_COL]].sort_values([ID_COL, TIME_COL]).reset_index(drop=True)


def latest_fact_time(conn: psycopg.Connection, target: str = "price") -> pd.Timestamp | None:
    """The newest public `ts_utc` of the target's fact table (None when empty or absent)."""
    table, _ = FACT_SOURCES[target]
    columns = table_columns(conn, table)
    if not columns:
        return None
    where = sql.SQL(" WHERE org_id IS NULL") if "org_id" in columns else sql.SQL("")
    row = conn.execute(sql.SQL("SELECT max(ts_utc) FROM {t}{w}").format(t=_table(table), w=where)).fetchone()
    return pd.Timestamp(row[0]).tz_convert("UTC") if row and row[0] is not None else None


# --- gold.forecasts -------------------------------------------------------------------------------------


def stored_forecasts(
    conn: psycopg.Connection,
    target: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The published forecast per (zone, hour) in [start, end): the newest run's row, in forecast-frame form.

    Columns unique_id, ds, model, y_hat, intervals, run_id, delivery_date. Empty if gold.forecasts is absent.
    """
    cols = [ID_COL, TIME_COL, "model", "y_hat", *INTERVAL_COLUMNS, "run_id", "delivery_date"]
    if not table_columns(conn, "gold.forecasts"):
        return pd.DataFrame(columns=cols)
    zone_filter = sql.SQL(" AND zone = ANY(%s)") if zones is not None else sql.SQL("")
    params: list[Any] = [target, pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()]
    if zones is not None:
        params.append(list(zones))
    rows = conn.execute(
        sql.SQL(
            """SELECT DISTINCT ON (zone, ts_utc) zone, ts_utc, model, y_hat, q10, q50, q90, lo80, hi80, lo95,
                      hi95, run_id, delivery_date
               FROM gold.forecasts WHERE target = %s AND ts_utc >= %s AND ts_utc < %s{z}
               ORDER BY zone, ts_utc, created_at DESC, run_id DESC"""
        ).format(z=zone_filter),
        params,
    ).fetchall()
    frame = pd.DataFrame(rows, columns=cols)
    if not frame.empty:
        frame[TIME_COL] = pd.to_datetime(frame[TIME_COL], utc=True).astype("datetime64[ns, UTC]")
        for c in ["y_hat", *INTERVAL_COLUMNS]:
            frame[c] = frame[c].astype(float)
    return frame


def forecast_runs(conn: psycopg.Connection, zone: str, target: str, start: datetime, end: datetime) -> pd.DataFrame:
    """Every run's gold.forecasts rows of one zone and target in [start, end) (FORECAST_RUN_COLUMNS).

    Unlike `stored_forecasts` the runs are not blended: a caller that needs one run covering a whole day
    picks it from these. Empty when gold.forecasts is absent.
    """
    if not table_columns(conn, "gold.forecasts"):
        return pd.DataFrame(columns=FORECAST_RUN_COLUMNS)
    rows = conn.execute(
        """SELECT run_id, model, ts_utc, y_hat, q10, q50, q90, lo80, hi80, created_at
           FROM gold.forecasts WHERE zone = %s AND target = %s AND ts_utc >= %s AND ts_utc < %s""",
        (zone, target, start, end),
    ).fetchall()
    return pd.DataFrame(rows, columns=FORECAST_RUN_COLUMNS)


# --- ml.model_selection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    """The model a backtest selected for a zone and target."""

    model: str
    version: str | None
    backtest_run_id: str


def champions(conn: psycopg.Connection) -> dict[tuple[str, str], Champion]:
    """(zone, target) -> the newest selection in ml.model_selection (empty when the table is absent)."""
    if not table_columns(conn, "ml.model_selection"):
        return {}
    rows = conn.execute(
        """SELECT DISTINCT ON (zone, target) zone, target, model, registry_version, backtest_run_id
           FROM ml.model_selection ORDER BY zone, target, selected_at DESC"""
    ).fetchall()
    return {(z, t): Champion(m, v, r) for z, t, m, v, r in rows}


# --- optimization result tables -------------------------------------------------------------------------


def result_rows_per_run(
    conn: psycopg.Connection, table: str, time_col: str, start: datetime, end: datetime
) -> dict[str, int]:
    """run_id -> all its rows in result `table`, for the runs with a row whose `time_col` is in [start, end)."""
    return dict(
        conn.execute(
            sql.SQL(
                "SELECT run_id, count(*) FROM {t} WHERE run_id IN "
                "(SELECT DISTINCT run_id FROM {t} WHERE {c} >= %s AND {c} < %s) GROUP BY run_id"
            ).format(t=_table(table), c=sql.Identifier(time_col)),
            (start, end),
        ).fetchall()
    )


# --- published and shadow forecasts, for scoring --------------------------------------------------------

FORECAST_ROW_COLUMNS = [ID_COL, TIME_COL, "model", "y_hat", "delivery_date", "run_id", "role"]


def forecast_rows_in(
    conn: psycopg.Connection,
    target: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every forecast row of `target` with an hour in [start, end): gold.forecasts as role `champion` (what
    was published) and ml.shadow_forecasts as role `challenger`, each with its run's delivery date
    (FORECAST_ROW_COLUMNS). Rows without a delivery date (written by other tools) are left out."""
    params: list[Any] = [target, pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()]
    zone_filter = sql.SQL("")
    if zones is not None:
        zone_filter = sql.SQL(" AND zone = ANY(%s)")
        params.append(list(zones))
    parts = []
    for table, role in (("gold.forecasts", "champion"), ("ml.shadow_forecasts", "challenger")):
        if table_columns(conn, table):
            parts.append(
                sql.SQL(
                    "SELECT zone, ts_utc, model, y_hat, delivery_date, run_id, {r} FROM {t} "
                    "WHERE target = %s AND ts_utc >= %s AND ts_utc < %s AND delivery_date IS NOT NULL{z}"
                ).format(r=sql.Literal(role), t=_table(table), z=zone_filter)
            )
    if not parts:
        return pd.DataFrame(columns=FORECAST_ROW_COLUMNS)
    rows = conn.execute(sql.SQL(" UNION ALL ").join(parts), params * len(parts)).fetchall()
    frame = pd.DataFrame(rows, columns=FORECAST_ROW_COLUMNS)
    frame[TIME_COL] = pd.to_datetime(frame[TIME_COL], utc=True).astype("datetime64[ns, UTC]")
    frame["y_hat"] = frame["y_hat"].astype(float)
    return frame
