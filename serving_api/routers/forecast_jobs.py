"""Forecasts on demand: `POST /forecasts` queues a job and answers 202; the result comes by polling
`GET /forecasts/jobs/{job_id}` or as a push on `WS /ws/forecasts/jobs/{job_id}`.

A request names either a `zone` (its public facts in gold, its champion model, as the daily forecast) or
uploads a `series` (hourly UTC timestamps, values and exogenous columns, plus the exogenous values of the
horizon in `future_exogenous`). The job runs the production pipeline (`ml.forecasting.run_forecast_job`)
off the request path, in a killable worker process, within `time_limit_s` (see `serving_api.forecast_jobs`).

Bad input is a 422 whose `details.field` names the field before anything is queued: a horizon outside
1..168 hours, too little history (fewer than 14 days), a series with gaps (a missing hour or value), an
unknown zone or timezone, a start after the zone's data. Jobs belong to the caller's organization
(row-level security): another organization's job id is a 404, exactly like an unknown one. Requires
`org:read` (analyst, trader, admin): a job is the organization's and costs its share of the workers.
WebSocket close codes as `WS /ws/kpis`: 4401 unauthenticated, 4403 forbidden, 4404 no such job; after the
final message the server closes with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import pandas as pd
import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ml.forecasting import (
    MAX_EXOGENOUS,
    MAX_FORECAST_HORIZON_HOURS,
    MAX_HISTORY_HOURS,
    ForecastRequestError,
    check_history_hours,
    uploaded_series,
)
from serving_api import repository
from serving_api.deps import OrgSession, principal_from_credentials, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.forecast_jobs import (
    FINISHED,
    WS_RECHECK_SECONDS,
    ForecastJobsBusy,
    is_orphan,
    read_job,
    runner,
)
from serving_api.models import CODE_PATTERN, ZONE_PATTERN
from serving_api.org_scope import set_org_scope
from serving_api.security import Permission

log = logging.getLogger(__name__)
router = APIRouter(tags=["forecasts"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]
MAX_TIME_LIMIT_S = 1800.0
MAX_LISTED_JOBS = 100
Values = Annotated[list[float | None], Field(max_length=MAX_HISTORY_HOURS)]


class SeriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamps: Annotated[list[datetime], Field(max_length=MAX_HISTORY_HOURS)] = Field(
        description="Consecutive UTC hours (start of each hour), ending with the last hour of a local day."
    )
    values: Values = Field(description="The target's value per timestamp (no nulls: a null is a gap).")
    exogenous: dict[str, Values] = Field(
        default_factory=dict,
        max_length=MAX_EXOGENOUS,
        description="Exogenous columns (e.g. load forecast), one value per timestamp.",
    )


class ForecastJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zone: str | None = Field(default=None, pattern=ZONE_PATTERN, description="Forecast this zone from gold.")
    series: SeriesIn | None = Field(default=None, description="Or forecast this uploaded series.")
    future_exogenous: dict[str, Values] = Field(
        default_factory=dict,
        max_length=MAX_EXOGENOUS,
        description="With `series`: each exogenous column's values for the horizon (at least horizon_hours).",
    )
    target: Literal["price", "load"] = "price"
    horizon_hours: int = Field(
        default=24, ge=1, le=MAX_FORECAST_HORIZON_HOURS, description="Hours forecast from the first local day."
    )
    start_date: date | None = Field(
        default=None,
        description="With `zone`: the first local day forecast (default: the day after the zone's newest price).",
    )
    timezone: str = Field(
        default="UTC", max_length=64, description="With `series`: the market's timezone (days are local)."
    )
    time_limit_s: float = Field(
        default=900.0,
        gt=0,
        le=MAX_TIME_LIMIT_S,
        description="The job is stopped after this many seconds (a 168 h production forecast took ~10 min on a "
        "busy 2-core machine; see benchmarks/README_forecasting.md).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ForecastJobRequest:
        if (self.zone is None) == (self.series is None):
            raise ValueError("give exactly one of zone or series")
        if self.zone is not None and self.future_exogenous:
            raise ValueError("future_exogenous goes with series; a zone's exogenous values come from gold")
        return self


class ForecastJobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    time_limit_s: float
    poll_url: str
    websocket_url: str


class ForecastJob(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "timed_out"]
    request: dict[str, Any] = Field(description="The request as queued (an uploaded series is summarised).")
    result: dict[str, Any] | None = Field(
        default=None,
        description="model, model_version, source (champion/production/fallback), notes, hours, wall_seconds, "
        "rows [{ts_utc, y_hat, q10, q50, q90, lo80, hi80, lo95, hi95}]",
    )
    error: dict[str, Any] | None = Field(default=None, description="{field, message} when failed or timed out")
    time_limit_s: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wall_seconds: float | None


class ForecastJobList(BaseModel):
    items: list[ForecastJob]


def _field_error(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}", {"field": field})


async def _zone_plan(conn: psycopg.AsyncConnection, body: ForecastJobRequest) -> dict[str, Any]:
    """The zone request's first local day, checked against the zone's facts (422 naming the field)."""
    row = await (await conn.execute("SELECT timezone FROM silver.ref__zones WHERE zone = %s", (body.zone,))).fetchone()
    if row is None:
        raise _field_error("zone", f"unknown zone {body.zone!r}")
    tz = row[0]
    table = "gold.fct_prices_hourly" if body.target == "price" else "gold.fct_load_hourly"
    try:
        async with conn.transaction():
            newest = await (
                await conn.execute(f"SELECT max(ts_utc) FROM {table} WHERE zone = %s", (body.zone,))
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        raise ApiError(503, "not_materialized", f"{table} is not built yet") from None
    if newest is None or newest[0] is None:
        raise _field_error("zone", f"too little history: no {body.target} facts for {body.zone}")
    latest = (pd.Timestamp(newest[0]).tz_convert(tz) + pd.Timedelta(hours=1)).date()
    first_day = body.start_date or latest
    if first_day > latest:
        raise _field_error(
            "start_date", f"{body.zone}'s {body.target} data ends before {latest}; the latest start is {latest}"
        )
    try:
        origin = pd.Timestamp(first_day).tz_localize(tz).tz_convert("UTC").to_pydatetime()
        oldest = origin - timedelta(days=182)
    except (ValueError, OverflowError):
        raise _field_error("start_date", f"{first_day} is out of range") from None
    count = await (
        await conn.execute(
            f"SELECT count(DISTINCT ts_utc) FROM {table} WHERE zone = %s AND ts_utc < %s AND ts_utc >= %s",
            (body.zone, origin, oldest),
        )
    ).fetchone()
    try:
        check_history_hours(int(count[0]), "zone")
    except ForecastRequestError as exc:
        raise _field_error(exc.field, exc.message) from None
    return {"first_day": first_day.isoformat(), "timezone": tz}


def _check_series(body: ForecastJobRequest) -> None:
    assert body.series is not None
    uploaded_series(
        body.series.timestamps,
        body.series.values,
        body.series.exogenous,
        body.future_exogenous,
        body.horizon_hours,
        body.timezone,
    )


def _summary(request: dict[str, Any]) -> dict[str, Any]:
    """The stored request as served: an uploaded series by its extent, not its values."""
    if request.get("mode") != "series":
        return request
    series = request["series"]
    return {
        **{k: v for k, v in request.items() if k not in ("series", "future_exogenous")},
        "series": {
            "hours": len(series["timestamps"]),
            "first": series["timestamps"][0],
            "last": series["timestamps"][-1],
            "exogenous": sorted(series.get("exogenous") or {}),
        },
    }


def _job(row: dict[str, Any]) -> ForecastJob:
    return ForecastJob(**{**row, "request": _summary(row["request"])})


@router.post(
    "/forecasts",
    status_code=202,
    response_model=ForecastJobAccepted,
    responses=error_responses(422, 503),
    summary="Queue an on-demand forecast of a zone or an uploaded series (202 with the job id)",
)
async def create_forecast_job(request: Request, body: ForecastJobRequest, session: Session):
    state = session.state
    jobs = runner(state)
    try:
        jobs.admit()
    except ForecastJobsBusy:
        raise ApiError(
            503, "forecast_busy", "every forecast worker is busy; try again shortly", headers={"Retry-After": "10"}
        ) from None
    payload: dict[str, Any] = {"target": body.target, "horizon_hours": body.horizon_hours}
    if body.zone is not None:
        conn = await session.conn()
        payload |= {"mode": "zone", "zone": body.zone, **await _zone_plan(conn, body)}
    else:
        try:
            await asyncio.to_thread(_check_series, body)
        except ForecastRequestError as exc:
            raise _field_error(exc.field, exc.message) from None
        except (ValueError, OverflowError) as exc:  # e.g. timestamps beyond pandas' range (years 1677-2262)
            raise _field_error("series.timestamps", f"cannot be read as hourly UTC timestamps ({exc})") from None
        assert body.series is not None
        payload |= {
            "mode": "series",
            "timezone": body.timezone,
            "series": body.series.model_dump(mode="json"),
            "future_exogenous": body.future_exogenous,
        }
    payload["calibration_days"] = state.options.forecast_job_calibration_days
    time_limit = min(body.time_limit_s, state.options.forecast_job_timeout_s)
    job_id = str(uuid.uuid4())
    principal = session.principal
    assert state.pool is not None
    # Committed before the job starts: the worker's status updates run on other connections.
    async with state.pool.connection() as conn, conn.transaction():
        await set_org_scope(conn, principal.org_id)
        await conn.execute(
            """INSERT INTO ml.forecast_jobs (job_id, org_id, requested_by, status, request, time_limit_s)
               VALUES (%s, %s, %s, 'queued', %s::jsonb, %s)""",
            (job_id, principal.org_id, principal.actor, json.dumps(payload), time_limit),
        )
        await repository.audit(
            conn,
            principal.org_id,
            principal.actor,
            "forecast.job",
            job_id,
            {"mode": payload["mode"], "target": body.target, "horizon_hours": body.horizon_hours},
        )
    jobs.start(job_id, principal.org_id, payload, time_limit)
    prefix = request.url.path.removesuffix("/forecasts")
    poll = f"{prefix}/forecasts/jobs/{job_id}"
    accepted = ForecastJobAccepted(
        job_id=job_id,
        status="queued",
        time_limit_s=time_limit,
        poll_url=poll,
        websocket_url=f"{prefix}/ws/forecasts/jobs/{job_id}",
    )
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": poll})


async def _visible_job(conn: psycopg.AsyncConnection, state: Any, job_id: str) -> dict[str, Any] | None:
    row = await read_job(conn, job_id)
    if row is not None and is_orphan(state, row):
        error = {"field": None, "message": "the API process running the job stopped; submit it again"}
        await conn.execute(
            """UPDATE ml.forecast_jobs SET status = 'failed', error = %s::jsonb, finished_at = now()
               WHERE job_id = %s AND status IN ('queued', 'running')""",
            (json.dumps(error), job_id),
        )
        row = await read_job(conn, job_id)
    return row


@router.get(
    "/forecasts/jobs/{job_id}",
    response_model=ForecastJob,
    responses=error_responses(404),
    summary="An on-demand forecast job: its status, and its result once it succeeded",
)
async def forecast_job(session: Session, job_id: Annotated[str, Path(pattern=CODE_PATTERN)]) -> ForecastJob:
    row = await _visible_job(await session.conn(), session.state, job_id)
    if row is None:
        raise ApiError(404, "not_found", f"job_id: no forecast job {job_id!r}", {"field": "job_id"})
    return _job(row)


@router.get(
    "/forecasts/jobs",
    response_model=ForecastJobList,
    summary="The organization's on-demand forecast jobs, newest first",
)
async def forecast_jobs(
    session: Session,
    status: Literal["queued", "running", "succeeded", "failed", "timed_out"] | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED_JOBS)] = 20,
) -> ForecastJobList:
    cur = (await session.conn()).cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT job_id, status, request, result, error, time_limit_s, created_at, started_at, finished_at,
                  wall_seconds FROM ml.forecast_jobs WHERE (%s::text IS NULL OR status = %s)
           ORDER BY created_at DESC, job_id LIMIT %s""",
        (status, status, limit),
    )
    return ForecastJobList(items=[_job(r) for r in await cur.fetchall()])


@router.websocket("/ws/forecasts/jobs/{job_id}")
async def forecast_job_stream(websocket: WebSocket, job_id: str) -> None:
    """Status changes of one job, then its final row (`type` `forecast_job`), then close 1000."""
    state = websocket.app.state.api
    q = websocket.query_params
    bearer = websocket.headers.get("authorization", "")
    token = q.get("access_token") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
    api_key = q.get("api_key") or websocket.headers.get("x-api-key")
    try:
        principal = await principal_from_credentials(state, token, api_key)
    except ApiError as exc:
        await websocket.close(code=4401, reason=exc.code)
        return
    if not principal.can(Permission.org_read):
        await websocket.close(code=4403, reason="forbidden")
        return
    if len(job_id) > 80 or not job_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        await websocket.close(code=4400, reason="invalid parameters")
        return

    async def current() -> dict[str, Any] | None:
        async with state.pool.connection() as conn, conn.transaction():
            await set_org_scope(conn, principal.org_id)
            return await _visible_job(conn, state, job_id)

    row = await current()
    if row is None:
        await websocket.close(code=4404, reason="not_found")
        return
    await websocket.accept()
    last_status = None
    heartbeat_at = asyncio.get_running_loop().time() + state.options.ws_heartbeat_seconds
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            if row is None:
                await websocket.close(code=4404, reason="not_found")
                return
            if row["status"] in FINISHED:
                await websocket.send_json({"type": "forecast_job", **_job(row).model_dump(mode="json")})
                await websocket.close(code=1000)
                return
            if row["status"] != last_status:
                last_status = row["status"]
                await websocket.send_json({"type": "forecast_job_status", "job_id": job_id, "status": last_status})
            event = state.forecast_jobs.done.get(job_id) if state.forecast_jobs else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait() if event else asyncio.sleep(WS_RECHECK_SECONDS), WS_RECHECK_SECONDS)
            now = asyncio.get_running_loop().time()
            if now >= heartbeat_at:
                heartbeat_at = now + state.options.ws_heartbeat_seconds
                await websocket.send_json({"type": "heartbeat", "at": datetime.now(UTC).isoformat()})
            try:
                await principal_from_credentials(state, token, api_key)
            except ApiError as exc:
                await websocket.close(code=4401, reason=exc.code)
                return
            row = await current()
