"""Validate one partition window of a Postgres table (silver or gold) against its suite.

Reads the rows of `market_date` in [min_date, max_date], the market floors/caps from `silver.ref__zones`,
the previous partition's row count (for the row-count-change check) and, for windows that reach today,
a freshness bound. Connects as the given URL's user: validation must see every organization's rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
from psycopg import sql

from expectations.runner import SuiteOutcome, validate_frame
from expectations.suites import SuiteParameters, suite_for
from infra import db

# How old the newest row of a window that includes today may be.
MAX_AGE: dict[str, timedelta] = {
    "silver.market__prices": timedelta(hours=3),
    "silver.market__load": timedelta(hours=3),
    "silver.market__generation": timedelta(hours=3),
    "silver.market__weather": timedelta(hours=6),
}
# Tables whose partition column is not `market_date` (trading state is keyed by delivery hour).
_DATE_EXPRESSIONS = {
    "silver.trading__bids": "(delivery_start AT TIME ZONE 'UTC')::date",
    "silver.trading__trades": "(delivery_start AT TIME ZONE 'UTC')::date",
}


def frame_from_query(database_url: str, query: sql.Composable, params: tuple = ()) -> pd.DataFrame:
    """The rows of `query` as a DataFrame with the query's column names."""
    with db.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def zone_bounds(database_url: str) -> pd.DataFrame:
    """zone, price_floor, price_cap of every zone in `silver.ref__zones`."""
    return frame_from_query(database_url, sql.SQL("SELECT zone, price_floor, price_cap FROM silver.ref__zones"))


def _table_ident(table: str) -> sql.Identifier:
    schema, name = table.split(".", 1)
    return sql.Identifier(schema, name)


def _date_expr(table: str) -> sql.Composable:
    return sql.SQL(_DATE_EXPRESSIONS.get(table, "market_date"))


def partition_frame(database_url: str, table: str, min_date: date, max_date: date) -> pd.DataFrame:
    """Rows of `table` whose partition date lies in [min_date, max_date]."""
    query = sql.SQL("SELECT * FROM {t} WHERE {d} BETWEEN %s AND %s").format(t=_table_ident(table), d=_date_expr(table))
    return frame_from_query(database_url, query, (min_date, max_date))


def previous_row_count(database_url: str, table: str, min_date: date, max_date: date) -> int | None:
    """Rows expected in [min_date, max_date] from the window of the same length just before it: that window's
    rows per day it holds, times the days of this one; None when it holds no day to go by.

    Per day held, not the plain count: the window before the first days of data is partly empty, and a full
    window measured against it would fail the row-count check for no fault of its own. The table's first day
    of data is left out of the baseline: data starts at some hour of it, in some timezone, so it is partial (a
    first day holding the minute KPIs of a few hours, 232 rows, would cap a week of full days at 7 x 232 x 1.5).
    """
    days = (max_date - min_date).days + 1
    query = sql.SQL(
        "WITH first_day AS (SELECT min({d}) AS day FROM {t}) "
        "SELECT count(*), count(DISTINCT {d}) FROM {t}, first_day WHERE {d} BETWEEN %s AND %s AND {d} > first_day.day"
    ).format(t=_table_ident(table), d=_date_expr(table))
    with db.connect(database_url) as conn:
        row = conn.execute(query, (min_date - timedelta(days=days), min_date - timedelta(days=1))).fetchone()
    count, days_held = (int(row[0]), int(row[1])) if row else (0, 0)
    return round(count / days_held * days) if days_held else None


def last_complete_market_date(now: datetime) -> date:
    """The last market date that is over in every timezone at `now`: a date ends at 12:00 UTC of the next
    day in the westernmost zones (UTC-12)."""
    return (now - timedelta(hours=12)).date() - timedelta(days=1)


def validate_partition(
    database_url: str,
    table: str,
    min_date: date,
    max_date: date,
    *,
    docs_dir: Path | None = None,
    now: datetime | None = None,
    kpi_codes: list[str] | None = None,
    check_freshness: bool = True,
) -> SuiteOutcome:
    """Validate the [min_date, max_date] window of `table` (e.g. "silver.market__prices").

    With `check_freshness`, a window that reaches today also expects its newest row within `MAX_AGE`. A window
    that holds a market day not yet over (`last_complete_market_date`) may hold fewer rows than the window
    before it, not more than its growth bound.
    """
    table_suite = suite_for(table)
    now = now or datetime.now(UTC)
    max_age = MAX_AGE.get(table) if check_freshness and max_date >= now.date() else None
    params = SuiteParameters(
        zones=zone_bounds(database_url),
        previous_row_count=previous_row_count(database_url, table, min_date, max_date),
        day_in_progress=max_date > last_complete_market_date(now),
        now=now if max_age else None,
        max_age=max_age,
        kpi_codes=kpi_codes,
    )
    frame = partition_frame(database_url, table, min_date, max_date)
    return validate_frame(frame, table_suite, params, docs_dir=docs_dir)


def validate_deliveries(
    database_url: str, table: str, first: date, last: date, *, docs_dir: Path | None = None
) -> SuiteOutcome:
    """Validate the rows of a current-state trading table (e.g. "silver.trading__bids") whose delivery
    date lies in [first, last]. No row-count-change or freshness check: the current state of bids and
    trades grows and shrinks with trading, and an empty window is legitimate."""
    params = SuiteParameters(zones=zone_bounds(database_url), min_rows=0)
    frame = partition_frame(database_url, table, first, last)
    return validate_frame(frame, suite_for(table), params, docs_dir=docs_dir)
