"""Parameterized ClickHouse analytics over the replicated gold tables (called by the API).

What belongs here: read-only analytical queries that return plain rows (lists of dicts). Safety rules:
every *value* (zones, time bounds, window sizes, thresholds) is bound through clickhouse-driver's
`%(name)s` parameters, which the driver escapes; every *identifier* (table, value column) is checked
against the `ingestion.bi.tables` registry before it is placed in the SQL text. User input is never
formatted into SQL.

Portability: ClickHouse 18.16 has no window functions, no `toStartOfInterval` and no server-side
parameters, so rolling statistics use arrays (`groupArray` + `arrayFilter` over the trailing window,
`arrayReduce` for the statistic) and rolling correlations fan every observation out to the window end
days it belongs to with `arrayJoin(range(...))`; both forms also run unchanged on current releases.

Tenancy: ClickHouse has no row-level security (18.16 no row policies either), so every function takes the
caller's `org_id` and reads public rows (`org_id` NULL) plus that organisation's own; `org_id=None` reads
public rows only. A series is a zone *and* its owner: an organisation's uploaded prices for a zone are a
series of their own next to the public one (rows carry `org_id`, NULL = public), never mixed into it.
Prices are read for one `market` (DA/RT) at a time; `market=None` skips that filter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from clickhouse_driver import Client

from ingestion.bi.tables import FCT_PRICES_5MIN, FCT_PRICES_HOURLY, TableSpec

NUMERIC_CH_TYPES = ("Float64", "Int64")
MAX_WINDOW_HOURS = 24 * 366
MAX_WINDOW_DAYS = 366
MAX_MINUTES = 7 * 24 * 60


class AnalyticsInputError(ValueError):
    """A parameter is out of range or names something the registry does not know (a 4xx for the API)."""


def _value_column(spec: TableSpec, column: str) -> str:
    try:
        col = spec.column(column)
    except KeyError as exc:
        raise AnalyticsInputError(str(exc)) from None
    if col.ch_type not in NUMERIC_CH_TYPES:
        raise AnalyticsInputError(f"{spec.ch_table}.{column} is not numeric ({col.ch_type})")
    return f"`{col.name}`"


def _require_ts(spec: TableSpec) -> str:
    if spec.ts_column is None:
        raise AnalyticsInputError(f"{spec.ch_table} has no timestamp column")
    return f"`{spec.ts_column}`"


def _naive_utc(value: dt.datetime | dt.date) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _zone_filter(zones: Sequence[str] | None, params: dict[str, Any]) -> str:
    if zones is None:
        return ""
    zones = [str(z) for z in zones]
    if not zones:
        raise AnalyticsInputError("zones must not be empty (pass None for all zones)")
    params["zones"] = tuple(zones)
    return " AND zone IN %(zones)s"


def _scope_filter(spec: TableSpec, org_id: str | None, market: str | None, params: dict[str, Any]) -> str:
    """The WHERE conditions for the caller's organisation and the market (values bound as parameters)."""
    where = ""
    if spec.has_org_column:
        if org_id is None:
            where += " AND isNull(org_id)"
        else:
            params["org_id"] = str(org_id)
            where += " AND (isNull(org_id) OR org_id = %(org_id)s)"
    if market is not None:
        if "market" not in spec.column_names:
            raise AnalyticsInputError(f"{spec.ch_table} has no market column (pass market=None)")
        params["market"] = str(market)
        where += " AND market = %(market)s"
    return where


def _owner(spec: TableSpec) -> str:
    # Nullable keys are avoided in GROUP BY/arrays (18.16): '' stands for public inside the queries
    return "ifNull(org_id, '')" if spec.has_org_column else "''"


def _rows(ch: Client, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    data, columns = ch.execute(query, params, with_column_types=True)
    names = [name for name, _ in columns]
    return [dict(zip(names, row, strict=True)) for row in data]


def price_anomalies(
    ch: Client,
    *,
    start: dt.datetime,
    end: dt.datetime,
    zones: Sequence[str] | None = None,
    org_id: str | None = None,
    market: str | None = "DA",
    window_hours: int = 168,
    z_threshold: float = 3.0,
    min_points: int = 24,
    table: TableSpec = FCT_PRICES_HOURLY,
    value_column: str = "price_avg",
) -> list[dict[str, Any]]:
    """Observations in [start, end) whose z-score against the trailing window is at least `z_threshold`.

    For each observation at time t the window is [t - window_hours, t) of the same series (zone and owner;
    the observation itself excluded); z = (value - mean) / sample stddev. Rows: zone, org_id (NULL =
    public), ts, value, mean, std, n, z; points with fewer than `min_points` window observations or a zero
    stddev are skipped. `z_threshold=0` returns all.
    """
    if not 1 <= window_hours <= MAX_WINDOW_HOURS:
        raise AnalyticsInputError(f"window_hours must be in 1..{MAX_WINDOW_HOURS}")
    if min_points < 2:
        raise AnalyticsInputError("min_points must be >= 2 (a sample stddev needs two points)")
    if z_threshold < 0:
        raise AnalyticsInputError("z_threshold must be >= 0")
    if end <= start:
        raise AnalyticsInputError("end must be after start")
    ts, value = _require_ts(table), _value_column(table, value_column)
    params: dict[str, Any] = {
        "start": _naive_utc(start),
        "end": _naive_utc(end),
        "window_s": window_hours * 3600,
        "min_points": min_points,
        "z": float(z_threshold),
    }
    where = _zone_filter(zones, params) + _scope_filter(table, org_id, market, params)
    query = f"""
SELECT zone, nullIf(owner, '') AS org_id, ts, value, mean, std, n, (value - mean) / std AS z
FROM (
    SELECT zone, owner, ts, value,
           arrayFilter((v, t) -> t >= ts - %(window_s)s AND t < ts, vs, tss) AS win,
           arrayReduce('avg', win) AS mean,
           arrayReduce('stddevSamp', win) AS std,
           length(win) AS n
    FROM (
        SELECT zone, owner, groupArray(t) AS tss, groupArray(v) AS vs
        FROM (
            SELECT zone, {_owner(table)} AS owner, {ts} AS t, toFloat64({value}) AS v
            FROM `{table.ch_table}`
            WHERE {ts} >= toDateTime(%(start)s, 'UTC') - %(window_s)s AND {ts} < toDateTime(%(end)s, 'UTC')
              AND `{table.date_column}` >= toDate(toDateTime(%(start)s, 'UTC') - %(window_s)s) - 1
              AND `{table.date_column}` <= toDate(toDateTime(%(end)s, 'UTC')) + 1{where}
        )
        GROUP BY zone, owner
    )
    ARRAY JOIN tss AS ts, vs AS value
    WHERE ts >= toDateTime(%(start)s, 'UTC')
)
WHERE n >= %(min_points)s AND std > 0 AND abs((value - mean) / std) >= %(z)s
ORDER BY zone, owner, ts
"""
    return _rows(ch, query, params)


def zone_price_correlations(
    ch: Client,
    *,
    start_day: dt.date,
    end_day: dt.date,
    zones: Sequence[str] | None = None,
    org_id: str | None = None,
    market: str | None = "DA",
    window_days: int = 7,
    min_overlap: int = 24,
    table: TableSpec = FCT_PRICES_HOURLY,
    value_column: str = "price_avg",
) -> list[dict[str, Any]]:
    """Pearson correlation of every pair of price series over a rolling window of `window_days` days.

    A series is a zone and its owner (public, or the caller's organisation). For each end day d in
    [start_day, end_day] the window holds the observations at equal timestamps of both series on days
    (d - window_days, d]. Rows: zone_a, org_a, zone_b, org_b ((zone_a, org_a) < (zone_b, org_b), public
    first), end_day, rho, n (pairs in the window); windows with fewer than `min_overlap` pairs are skipped.
    """
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise AnalyticsInputError(f"window_days must be in 1..{MAX_WINDOW_DAYS}")
    if end_day < start_day:
        raise AnalyticsInputError("end_day must not be before start_day")
    if min_overlap < 3:
        raise AnalyticsInputError("min_overlap must be >= 3")
    ts, value = _require_ts(table), _value_column(table, value_column)
    params: dict[str, Any] = {
        "first_day": start_day - dt.timedelta(days=window_days - 1),
        "start_day": start_day,
        "end_day": end_day,
        "window_days": window_days,
        "min_overlap": min_overlap,
    }
    where = _zone_filter(zones, params) + _scope_filter(table, org_id, market, params)
    side = (
        f"SELECT {ts} AS t, zone AS {{zone}}, {_owner(table)} AS {{owner}}, toFloat64({value}) AS {{value}} "
        f"FROM `{table.ch_table}` "
        f"WHERE toDate({ts}) >= %(first_day)s AND toDate({ts}) <= %(end_day)s"
        f" AND `{table.date_column}` >= toDate(%(first_day)s) - 1"
        f" AND `{table.date_column}` <= toDate(%(end_day)s) + 1"
        f"{where}"
    )
    query = f"""
SELECT zone_a, nullIf(owner_a, '') AS org_a, zone_b, nullIf(owner_b, '') AS org_b, end_day, rho, n
FROM (
    SELECT zone_a, owner_a, zone_b, owner_b, end_day, corr(va, vb) AS rho, count() AS n
    FROM (
        SELECT zone_a, owner_a, zone_b, owner_b, va, vb,
               arrayJoin(arrayMap(k -> toDate(t) + k, range(toUInt64(%(window_days)s)))) AS end_day
        FROM ({side.format(zone="zone_a", owner="owner_a", value="va")}) AS side_a
        ALL INNER JOIN ({side.format(zone="zone_b", owner="owner_b", value="vb")}) AS side_b USING t
        WHERE zone_a < zone_b OR (zone_a = zone_b AND owner_a < owner_b)
    )
    WHERE end_day >= %(start_day)s AND end_day <= %(end_day)s
    GROUP BY zone_a, owner_a, zone_b, owner_b, end_day
    HAVING n >= %(min_overlap)s
)
ORDER BY zone_a, owner_a, zone_b, owner_b, end_day
"""
    return _rows(ch, query, params)


def realtime_kpis(
    ch: Client,
    *,
    minutes: int,
    now: dt.datetime,
    zones: Sequence[str] | None = None,
    org_id: str | None = None,
    market: str | None = "RT",
    table: TableSpec = FCT_PRICES_5MIN,
    value_column: str = "price",
) -> list[dict[str, Any]]:
    """Per-series KPIs (zone, owner, currency) over the observations with ts in (now - minutes, now].

    Every five-minute price counts as an observation, the zone price (node NULL) as well as nodal prices;
    `n_nodes` counts distinct nodes only. Rows: zone, org_id (NULL = public), currency, n_obs, n_nodes,
    price_avg, price_min, price_max, price_std (population), price_last (value at the latest timestamp,
    averaged over its rows), last_ts. `now` is explicit so callers and tests agree on it.
    """
    if not 1 <= minutes <= MAX_MINUTES:
        raise AnalyticsInputError(f"minutes must be in 1..{MAX_MINUTES}")
    ts, value = _require_ts(table), _value_column(table, value_column)
    has_node = "node" in table.column_names
    # uniqExact skips NULL arguments: the zone price (node NULL) is not a node
    node = "uniqExact(node)" if has_node else "toUInt64(0)"
    node_col = ", node" if has_node else ""
    has_currency = "currency" in table.column_names
    currency = "currency" if has_currency else "''"
    params: dict[str, Any] = {"now": _naive_utc(now), "seconds": minutes * 60}
    where = _zone_filter(zones, params) + _scope_filter(table, org_id, market, params)
    query = f"""
SELECT zone, nullIf(owner, '') AS org_id, cur AS currency, n_obs, n_nodes, price_avg, price_min, price_max,
       price_std, last_ts, arrayReduce('avg', arrayFilter((v, t) -> t = last_ts, vs, tss)) AS price_last
FROM (
    SELECT zone, owner, cur, count() AS n_obs, {node} AS n_nodes, avg(v) AS price_avg, min(v) AS price_min,
           max(v) AS price_max, stddevPop(v) AS price_std, max(t) AS last_ts,
           groupArray(v) AS vs, groupArray(t) AS tss
    FROM (
        SELECT zone, {_owner(table)} AS owner, {currency} AS cur, {ts} AS t, toFloat64({value}) AS v{node_col}
        FROM `{table.ch_table}`
        WHERE {ts} > toDateTime(%(now)s, 'UTC') - %(seconds)s AND {ts} <= toDateTime(%(now)s, 'UTC')
          AND `{table.date_column}` >= toDate(toDateTime(%(now)s, 'UTC') - %(seconds)s) - 1
          AND `{table.date_column}` <= toDate(toDateTime(%(now)s, 'UTC')) + 1{where}
    )
    GROUP BY zone, owner, cur
)
ORDER BY zone, owner, currency
"""
    return _rows(ch, query, params)
