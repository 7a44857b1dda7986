"""What gold holds about the models behind the forecasts: flagged anomalies, backtests, the champion chosen
per zone (now and over time) and the weekly drift summaries, paged, filtered and exportable like every
tabular endpoint. All of it is market-level data (no organization's rows).

`from`/`to` filter: the flagged hour (anomalies), the run's creation (backtests), the selection time
(models) and the end of the drift window (drift).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import (
    CODE_PATTERN,
    ZONE_PATTERN,
    AnomalyPage,
    BacktestPage,
    DriftSummaryPage,
    ModelSelectionPage,
)
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["model monitoring"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.market_read))]
Params = Annotated[TableParams, Depends(table_params)]
ZoneQuery = Annotated[str | None, Query(pattern=ZONE_PATTERN)]
TargetQuery = Annotated[Literal["price", "load"] | None, Query()]
ModelQuery = Annotated[str | None, Query(pattern=CODE_PATTERN)]


@router.get(
    "/anomalies",
    response_model=AnomalyPage,
    responses=tabular_responses(AnomalyPage),
    summary="Price and load spikes and level shifts per zone and hour (gold.anomalies)",
)
async def anomalies(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    target: TargetQuery = None,
    kind: Annotated[Literal["spike", "level_shift"] | None, Query()] = None,
):
    filters = {"zone": zone, "target": target, "kind": kind}
    return await tabular_response(request, session, SERVED_TABLES["anomalies"], filters, params)


@router.get(
    "/backtests",
    response_model=BacktestPage,
    responses=tabular_responses(BacktestPage),
    summary="Rolling-origin backtests: models compared and their metrics per zone and target (ml.backtests)",
)
async def backtests(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    target: TargetQuery = None,
    run_id: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
):
    filters = {"zone": zone, "target": target, "run_id": run_id}
    return await tabular_response(request, session, SERVED_TABLES["backtests"], filters, params)


@router.get(
    "/models/current",
    response_model=ModelSelectionPage,
    responses=tabular_responses(ModelSelectionPage),
    summary="The model in use per zone and target: the newest champion selection",
)
async def current_models(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    target: TargetQuery = None,
    model: ModelQuery = None,
):
    filters = {"zone": zone, "target": target, "model": model}
    return await tabular_response(request, session, SERVED_TABLES["current_models"], filters, params)


@router.get(
    "/models/selections",
    response_model=ModelSelectionPage,
    responses=tabular_responses(ModelSelectionPage),
    summary="Every champion selection over time (ml.model_selection)",
)
async def model_selections(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    target: TargetQuery = None,
    model: ModelQuery = None,
):
    filters = {"zone": zone, "target": target, "model": model}
    return await tabular_response(request, session, SERVED_TABLES["model_selections"], filters, params)


@router.get(
    "/drift",
    response_model=DriftSummaryPage,
    responses=tabular_responses(DriftSummaryPage),
    summary="Weekly drift of price, load and forecast error per zone (ml.drift_summaries)",
)
async def drift(request: Request, session: Session, params: Params, zone: ZoneQuery = None):
    return await tabular_response(request, session, SERVED_TABLES["drift_summaries"], {"zone": zone}, params)
