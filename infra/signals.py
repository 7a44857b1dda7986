"""Warehouse signals: what the pipeline sends when it writes gold, so the API's cache and streams follow.

The pipeline (dbt gold runs, the Python gold writers, the real-time KPI path) calls these functions; the API
only listens on the channels named here. Both functions run inside the caller's transaction, so the version
bump and the NOTIFY become visible exactly when the new rows commit, and never for a rolled-back write.
"""

from __future__ import annotations

import json
from datetime import date, datetime

import psycopg

KPI_CHANNEL = "optibid_kpi"
TABLE_VERSION_CHANNEL = "optibid_table_version"
AUTH_CHANNEL = "optibid_auth"


def bump_table_version(conn: psycopg.Connection, table: str, market_date: date) -> int:
    """Increment the version of one partition (table, market_date) of a gold table; the new version.

    The API keys cached responses on these versions, so a re-materialized partition is never served stale.
    """
    row = conn.execute(
        """INSERT INTO ops.table_versions AS v (table_name, market_date, version, updated_at)
           VALUES (%s, %s, 1, now())
           ON CONFLICT (table_name, market_date)
           DO UPDATE SET version = v.version + 1, updated_at = now()
           RETURNING version""",
        (table, market_date),
    ).fetchone()
    version = int(row[0]) if row else 1
    payload = json.dumps({"table": table, "market_date": market_date.isoformat(), "version": version})
    conn.execute("SELECT pg_notify(%s, %s)", (TABLE_VERSION_CHANNEL, payload))
    return version


def notify_kpi_update(
    conn: psycopg.Connection,
    kpi_code: str,
    grain: str,
    zone: str,
    period_from: datetime,
    period_to: datetime,
    org_id: str | None = None,
) -> None:
    """Tell API WebSocket streams that `gold.kpi_values` rows in [period_from, period_to] changed.

    Only coordinates travel in the notification (8 kB payload limit, no values outside RLS): the API reads
    the rows itself, under the subscriber's organization.
    """
    payload = json.dumps(
        {
            "kpi_code": kpi_code,
            "grain": grain,
            "zone": zone,
            "org_id": org_id,
            "period_from": period_from.isoformat(),
            "period_to": period_to.isoformat(),
        }
    )
    conn.execute("SELECT pg_notify(%s, %s)", (KPI_CHANNEL, payload))


def market_dates(first: date, last: date) -> list[date]:
    """Every date from `first` to `last`, both included."""
    return [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]


def signal_gold_window(conn: psycopg.Connection, table: str, first: date, last: date) -> int:
    """Bump `table`'s version for every market date of a rewritten window [first, last]; dates bumped.

    A window rebuild deletes and re-inserts each date, so every date changed, including one left empty.
    """
    dates = market_dates(first, last)
    for market_date in dates:
        bump_table_version(conn, table, market_date)
    return len(dates)


def signal_kpi_window(conn: psycopg.Connection, first: date, last: date) -> int:
    """Notify KPI subscribers of the `gold.kpi_values` rows of market dates [first, last]; notifications sent.

    One notification per (kpi_code, grain, zone, org_id) spanning the first to the last period written.
    """
    groups = conn.execute(
        """SELECT kpi_code, grain, zone, org_id, min(period_start), max(period_start)
           FROM gold.kpi_values WHERE market_date BETWEEN %s AND %s
           GROUP BY kpi_code, grain, zone, org_id
           ORDER BY kpi_code, grain, zone, org_id NULLS FIRST""",
        (first, last),
    ).fetchall()
    for kpi_code, grain, zone, org_id, period_from, period_to in groups:
        notify_kpi_update(conn, kpi_code, grain, zone, period_from, period_to, org_id)
    return len(groups)
