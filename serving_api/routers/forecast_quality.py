"""How good and why: forecast accuracy over time, champion/challenger decisions, per-hour explanations.

`GET /forecasts/accuracy`: MAE, RMSE, sMAPE and bias per zone, target, model, role (`champion` = published,
`challenger` = shadow) and horizon day, per scored local day (ml.forecast_accuracy, written by the
`ml/forecast_accuracy` asset once actuals exist). `GET /forecasts/promotions`: every decision of the promotion
rule with its evidence (ml.promotion_decisions). `GET /forecasts/explanations`: per forecast hour of a
delivery day, the inputs contributing most to the LEAR and DNN forecasts (ml.forecast_explanations), with the
rest summed as `other_inputs` so that baseline + contributions + other_inputs (+ the integrated gradients'
residual) is the model's forecast. All public market data (`market:read`); every dimension is bounded.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import CODE_PATTERN, ZONE_PATTERN
from serving_api.security import Permission

router = APIRouter(tags=["forecasts"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.market_read))]
MAX_DAYS = 366
MAX_ROWS = 10_000
MAX_TOP = 100
BASELINE, RESIDUAL = "(baseline)", "(ig_residual)"


class AccuracyRow(BaseModel):
    zone: str
    target: str
    model: str
    role: Literal["champion", "challenger"]
    horizon_day: int
    scored_date: date
    n_hours: int
    mae: float
    rmse: float
    smape: float | None
    bias: float


class AccuracyPage(BaseModel):
    data: list[AccuracyRow]
    truncated: bool = Field(description="More rows matched than `limit`: narrow the filters or the dates.")


class PromotionDecision(BaseModel):
    decided_at: datetime
    zone: str
    target: str
    champion: str
    challenger: str
    days: int
    champion_mae: float | None
    challenger_mae: float | None
    dm_statistic: float | None
    p_value: float | None
    promoted: bool
    reason: str


class Contribution(BaseModel):
    feature: str
    feature_value: float | None
    contribution: float


class ExplainedHour(BaseModel):
    ts_utc: datetime
    model: str
    method: str
    y_hat: float
    baseline: float
    contributions: list[Contribution] = Field(description="The `top` inputs by absolute contribution.")
    other_inputs: float = Field(description="Sum of the remaining inputs' contributions.")
    residual: float = Field(description="Integrated gradients' step error (0 for LEAR, which is exact).")


class Explanation(BaseModel):
    zone: str
    target: str
    delivery_date: date
    mlflow_run_id: str | None = Field(description="The MLflow run holding the day's explanation plots.")
    hours: list[ExplainedHour]


def _window(start: date | None, end: date | None) -> tuple[date, date]:
    end = end or datetime.now(UTC).date()
    try:
        start = start or end - timedelta(days=30)
    except OverflowError:
        raise ApiError(422, "validation_error", "to: out of range", {"field": "to"}) from None
    if start > end:
        raise ApiError(422, "validation_error", "from: must not be after to", {"field": "from"})
    if (end - start).days > MAX_DAYS:
        raise ApiError(422, "validation_error", f"from: at most {MAX_DAYS} days before to", {"field": "from"})
    return start, end


@router.get("/forecasts/accuracy", response_model=AccuracyPage, summary="Forecast accuracy per scored day")
async def forecast_accuracy(
    session: Session,
    zone: Annotated[str | None, Query(pattern=ZONE_PATTERN)] = None,
    target: Literal["price", "load"] = "price",
    model: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
    role: Literal["champion", "challenger"] | None = None,
    horizon_day: Annotated[int | None, Query(ge=1, le=7)] = None,
    start: Annotated[date | None, Query(alias="from", description="First scored day (default: 30 days back)")] = None,
    end: Annotated[date | None, Query(alias="to", description="Last scored day (default: today)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 1000,
) -> AccuracyPage:
    first, last = _window(start, end)
    cur = (await session.conn()).cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT zone, target, model, role, horizon_day, scored_date, n_hours, mae, rmse, smape, bias
           FROM ml.forecast_accuracy
           WHERE target = %(target)s AND scored_date BETWEEN %(first)s AND %(last)s
             AND (%(zone)s::text IS NULL OR zone = %(zone)s) AND (%(model)s::text IS NULL OR model = %(model)s)
             AND (%(role)s::text IS NULL OR role = %(role)s)
             AND (%(horizon)s::int IS NULL OR horizon_day = %(horizon)s)
           ORDER BY scored_date, zone, role, model, horizon_day LIMIT %(limit)s""",
        {
            "target": target,
            "first": first,
            "last": last,
            "zone": zone,
            "model": model,
            "role": role,
            "horizon": horizon_day,
            "limit": limit + 1,
        },
    )
    rows = await cur.fetchall()
    return AccuracyPage(data=[AccuracyRow(**r) for r in rows[:limit]], truncated=len(rows) > limit)


@router.get(
    "/forecasts/promotions",
    response_model=list[PromotionDecision],
    summary="Champion/challenger decisions, newest first",
)
async def promotions(
    session: Session,
    zone: Annotated[str | None, Query(pattern=ZONE_PATTERN)] = None,
    target: Literal["price", "load"] = "price",
    promoted: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PromotionDecision]:
    cur = (await session.conn()).cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT decided_at, zone, target, champion, challenger, days, champion_mae, challenger_mae,
                  dm_statistic, p_value, promoted, reason FROM ml.promotion_decisions
           WHERE target = %(target)s AND (%(zone)s::text IS NULL OR zone = %(zone)s)
             AND (%(promoted)s::boolean IS NULL OR promoted = %(promoted)s)
           ORDER BY decided_at DESC, zone LIMIT %(limit)s""",
        {"target": target, "zone": zone, "promoted": promoted, "limit": limit},
    )
    return [PromotionDecision(**r) for r in await cur.fetchall()]


@router.get(
    "/forecasts/explanations",
    response_model=Explanation,
    responses=error_responses(404),
    summary="Per forecast hour, the inputs that moved the LEAR and DNN forecasts",
)
async def explanations(
    session: Session,
    zone: Annotated[str, Query(pattern=ZONE_PATTERN)],
    delivery_date: date,
    target: Literal["price"] = "price",
    model: Annotated[Literal["LEAR", "DNN"] | None, Query()] = None,
    top: Annotated[int, Query(ge=1, le=MAX_TOP, description="Inputs listed per hour.")] = 10,
) -> Explanation:
    cur = (await session.conn()).cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT ts_utc, model, method, feature, feature_value, contribution, y_hat, mlflow_run_id
           FROM ml.forecast_explanations
           WHERE zone = %s AND target = %s AND delivery_date = %s AND (%s::text IS NULL OR model = %s)
           ORDER BY model, ts_utc, abs(contribution) DESC, feature""",
        (zone, target, delivery_date, model, model),
    )
    rows = await cur.fetchall()
    if not rows:
        raise ApiError(
            404, "not_found", f"zone: no explanations of {zone} for {delivery_date}", {"field": "delivery_date"}
        )
    by_hour: dict[tuple[str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_hour[(r["model"], r["ts_utc"])].append(r)
    hours = []
    for (name, ts), group in by_hour.items():
        special = {r["feature"]: r["contribution"] for r in group if r["feature"] in (BASELINE, RESIDUAL)}
        inputs = [r for r in group if r["feature"] not in (BASELINE, RESIDUAL)]
        hours.append(
            ExplainedHour(
                ts_utc=ts,
                model=name,
                method=group[0]["method"],
                y_hat=group[0]["y_hat"],
                baseline=special.get(BASELINE, 0.0),
                contributions=[
                    Contribution(feature=r["feature"], feature_value=r["feature_value"], contribution=r["contribution"])
                    for r in inputs[:top]
                ],
                other_inputs=sum(r["contribution"] for r in inputs[top:]),
                residual=special.get(RESIDUAL, 0.0),
            )
        )
    return Explanation(
        zone=zone, target=target, delivery_date=delivery_date, mlflow_run_id=rows[0]["mlflow_run_id"], hours=hours
    )
