"""ClickHouse analytics and the semantic description of the gold layer.

The queries are `ingestion.bi.analytics` (values bound as parameters, identifiers from the registry); bad
parameters are 422 (FastAPI bounds) or 400 (`AnalyticsInputError`), an unreachable or unconfigured ClickHouse
is 503. The API never starts a ClickHouse server: it uses `CLICKHOUSE_URL`, or the embedded server when the
BI export already runs one (a GET that boots a database would be a surprising side effect).

Tenancy: ClickHouse has no row-level security (and 18.16 no row policies); the analytics functions take
the caller's organization and read public rows plus its own (bound as a query parameter), returning an
organization's private series (e.g. uploaded prices) as series of their own with `org_id` set.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from infra import clickhouse as ch_infra
from infra.settings import Settings
from ingestion import bi
from serving_api import repository
from serving_api.deps import OrgSession, api_state, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.security import Permission

REPO_ROOT = Path(__file__).resolve().parents[2]
DBT_MANIFEST = REPO_ROOT / "dbt_project" / "target" / "manifest.json"
ZONES_PATTERN = r"^[A-Za-z0-9_\-]{1,40}(,[A-Za-z0-9_\-]{1,40}){0,99}$"

router = APIRouter(tags=["analytics"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.market_read))]
# Query cost bounds. price-anomalies compares each observation with its trailing window inside one array per
# series, so its cost grows with (span + window)²; correlations fan every observation out to `window_days`
# end days for every pair of series. Spans and zone lists are bounded here, and every query runs under
# `CLICKHOUSE_QUERY_SETTINGS` (time and memory caps, read-only) so what slips through is still stopped.
MAX_ANOMALY_SPAN_DAYS = 93
MAX_ANOMALY_SPAN_PLUS_WINDOW_HOURS = 24 * 186
MAX_CORRELATION_DAYS = 120  # end days plus the window
MAX_ZONES = 20
CLICKHOUSE_QUERY_SETTINGS = {
    "max_execution_time": 15,
    "max_memory_usage": 2 * 1024**3,
    "readonly": 1,
}

Zones = Annotated[
    str | None, Query(pattern=ZONES_PATTERN, description="Comma-separated zones; all if omitted")
]


class AnomalyRow(BaseModel):
    zone: str
    org_id: str | None = None  # NULL: public series; else the caller's own (e.g. uploaded prices)
    ts: datetime
    value: float | None
    mean: float | None
    std: float | None
    n: int
    z: float | None


class CorrelationRow(BaseModel):
    zone_a: str
    org_a: str | None = None
    zone_b: str
    org_b: str | None = None
    end_day: date
    rho: float | None
    n: int


class RealtimeKpiRow(BaseModel):
    zone: str
    org_id: str | None = None
    currency: str
    n_obs: int
    n_nodes: int
    price_avg: float | None
    price_min: float | None
    price_max: float | None
    price_std: float | None
    price_last: float | None
    last_ts: datetime


class AnomalyResult(BaseModel):
    count: int
    data: list[AnomalyRow]


class CorrelationResult(BaseModel):
    count: int
    data: list[CorrelationRow]


class RealtimeKpiResult(BaseModel):
    count: int
    data: list[RealtimeKpiRow]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_range(name: str, value: date) -> None:
    # ClickHouse DateTime covers 1970..2106; outside it the server would answer garbage, not an error.
    if not 1971 <= value.year <= 2105:
        raise ApiError(400, "invalid_parameter", f"{name} must be between 1971 and 2105")


def _clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None  # JSON has no NaN (a constant series has no correlation)
            elif isinstance(v, datetime):
                v = _utc(v)
            clean[k] = v
        out.append(clean)
    return out


def _clickhouse_url(settings: Settings) -> str:
    if settings.clickhouse_url:
        return settings.clickhouse_url
    if ch_infra.embedded_clickhouse_status(settings).endswith(": running"):
        return ch_infra.clickhouse_url(settings)
    raise ApiError(
        503,
        "clickhouse_unavailable",
        "ClickHouse is not configured: set CLICKHOUSE_URL or run the BI export, which starts the embedded server",
    )


def _run(settings: Settings, org_id: str, spec: bi.TableSpec, query: Any, **kwargs: Any) -> list[dict[str, Any]]:
    from clickhouse_driver import Client
    from clickhouse_driver import errors as ch_errors

    try:
        url = _clickhouse_url(settings)
    except (ch_infra.ClickHouseNotInstalledError, ch_infra.ClickHouseStartError) as exc:
        raise ApiError(503, "clickhouse_unavailable", f"ClickHouse is unavailable: {exc}") from None
    client = Client.from_url(url)
    client.settings.update(CLICKHOUSE_QUERY_SETTINGS)
    try:
        return _clean(query(client, table=spec, org_id=org_id, **kwargs))
    except bi.AnalyticsInputError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    except ch_errors.ServerException as exc:
        if exc.code == ch_errors.ErrorCodes.UNKNOWN_TABLE:
            raise ApiError(
                503, "dataset_unavailable", f"{spec.ch_table} has not been replicated to ClickHouse yet"
            ) from None
        if exc.code in (ch_errors.ErrorCodes.TIMEOUT_EXCEEDED, ch_errors.ErrorCodes.MEMORY_LIMIT_EXCEEDED):
            raise ApiError(
                400,
                "query_too_expensive",
                "the query exceeded its time or memory budget; narrow the span, window or zones",
                {"limits": CLICKHOUSE_QUERY_SETTINGS},
            ) from None
        raise
    except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError) as exc:
        raise ApiError(
            503, "clickhouse_unavailable", f"ClickHouse is unreachable: {type(exc).__name__}"
        ) from None
    finally:
        client.disconnect()


def _zones(zones: str | None) -> list[str] | None:
    if not zones:
        return None
    listed = zones.split(",")
    if len(listed) > MAX_ZONES:
        raise ApiError(
            400, "invalid_parameter", f"zones: {len(listed)} zones; at most {MAX_ZONES}", {"field": "zones"}
        )
    return listed


_ERR = error_responses(400, 503)


async def _counted_rows(
    request: Request, session: OrgSession, spec: bi.TableSpec, query: Any, **kwargs: Any
) -> dict[str, Any]:
    """`{count, data}` of one analytics query, run off the event loop in the caller's organization."""
    rows = await asyncio.to_thread(_run, api_state(request).settings, session.principal.org_id, spec, query, **kwargs)
    return {"count": len(rows), "data": rows}


@router.get(
    "/analytics/price-anomalies",
    response_model=AnomalyResult,
    responses=_ERR,
    summary="Hourly day-ahead prices whose z-score against the trailing window reaches the threshold",
)
async def price_anomalies(
    request: Request,
    session: Session,
    start: Annotated[datetime, Query(description="Inclusive start (UTC if no offset)")],
    end: Annotated[datetime, Query(description="Exclusive end (UTC if no offset)")],
    zones: Zones = None,
    window_hours: Annotated[int, Query(ge=1, le=bi.MAX_WINDOW_HOURS)] = 168,
    z_threshold: Annotated[float, Query(ge=0, le=1000)] = 3.0,
    min_points: Annotated[int, Query(ge=2, le=100_000)] = 24,
):
    _in_range("start", start)
    _in_range("end", end)
    span_hours = (_utc(end) - _utc(start)).total_seconds() / 3600
    if span_hours > MAX_ANOMALY_SPAN_DAYS * 24:
        raise ApiError(
            400,
            "invalid_parameter",
            f"end: at most {MAX_ANOMALY_SPAN_DAYS} days after start",
            {"field": "end", "limit_days": MAX_ANOMALY_SPAN_DAYS},
        )
    if span_hours + window_hours > MAX_ANOMALY_SPAN_PLUS_WINDOW_HOURS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"window_hours: the span plus the window may cover at most {MAX_ANOMALY_SPAN_PLUS_WINDOW_HOURS} hours",
            {"field": "window_hours", "limit_hours": MAX_ANOMALY_SPAN_PLUS_WINDOW_HOURS},
        )
    return await _counted_rows(
        request,
        session,
        bi.FCT_PRICES_HOURLY,
        bi.price_anomalies,
        start=_utc(start),
        end=_utc(end),
        zones=_zones(zones),
        window_hours=window_hours,
        z_threshold=z_threshold,
        min_points=min_points,
    )


@router.get(
    "/analytics/correlations",
    response_model=CorrelationResult,
    responses=_ERR,
    summary="Rolling Pearson correlation of hourly day-ahead prices for every pair of series",
)
async def correlations(
    request: Request,
    session: Session,
    start_day: Annotated[date, Query(description="First window end day")],
    end_day: Annotated[date, Query(description="Last window end day (inclusive)")],
    zones: Zones = None,
    window_days: Annotated[int, Query(ge=1, le=bi.MAX_WINDOW_DAYS)] = 7,
    min_overlap: Annotated[int, Query(ge=3, le=100_000)] = 24,
):
    _in_range("start_day", start_day)
    _in_range("end_day", end_day)
    if (end_day - start_day).days > bi.MAX_WINDOW_DAYS:
        raise ApiError(400, "invalid_parameter", f"at most {bi.MAX_WINDOW_DAYS} end days per request")
    if (end_day - start_day).days + window_days > MAX_CORRELATION_DAYS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"window_days: the end days plus the window may cover at most {MAX_CORRELATION_DAYS} days",
            {"field": "window_days", "limit_days": MAX_CORRELATION_DAYS},
        )
    return await _counted_rows(
        request,
        session,
        bi.FCT_PRICES_HOURLY,
        bi.zone_price_correlations,
        start_day=start_day,
        end_day=end_day,
        zones=_zones(zones),
        window_days=window_days,
        min_overlap=min_overlap,
    )


@router.get(
    "/analytics/realtime-kpis",
    response_model=RealtimeKpiResult,
    responses=_ERR,
    summary="Per-zone KPIs of the 5-minute real-time prices (zone and nodes) over the last minutes",
)
async def realtime_kpis(
    request: Request,
    session: Session,
    minutes: Annotated[int, Query(ge=1, le=bi.MAX_MINUTES)] = 60,
    now: Annotated[datetime | None, Query(description="End of the window (default: now, UTC)")] = None,
    zones: Zones = None,
):
    if now is not None:
        _in_range("now", now)
    return await _counted_rows(
        request,
        session,
        bi.FCT_PRICES_5MIN,
        bi.realtime_kpis,
        minutes=minutes,
        now=_utc(now) if now else datetime.now(UTC),
        zones=_zones(zones),
    )


@router.get(
    "/docs/gold",
    response_model=None,
    # Not response_class=HTMLResponse: that would document the JSON error bodies as text/html too.
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "HTML page"}},
    summary="The gold layer described: tables, grain, columns (dbt manifest) and KPI definitions",
)
async def gold_docs(request: Request, session: Session):
    try:
        kpis = await repository.kpi_catalog(api_state(request), await session.conn())
    except ApiError as exc:
        if exc.status != 503:
            raise
        kpis = []  # gold.kpi_catalog not built yet: the tables are still described
    html = await asyncio.to_thread(bi.render_semantic_html, DBT_MANIFEST, kpis)
    return HTMLResponse(html)
