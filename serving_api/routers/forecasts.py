"""Price and load forecasts with their quantiles and prediction intervals."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import CODE_PATTERN, ZONE_PATTERN, ForecastPage
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["forecasts"], responses=error_responses(*STANDARD_ERRORS))


@router.get(
    "/forecasts",
    response_model=ForecastPage,
    responses=tabular_responses(ForecastPage),
    summary="Forecasts (y_hat, q10/q50/q90, 80% and 95% intervals)",
)
async def forecasts(
    request: Request,
    session: Annotated[OrgSession, Depends(scoped(Permission.market_read))],
    params: Annotated[TableParams, Depends(table_params)],
    zone: Annotated[str | None, Query(pattern=ZONE_PATTERN)] = None,
    target: Literal["price", "load"] = "price",
    model: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
    run_id: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
):
    return await tabular_response(
        request,
        session,
        SERVED_TABLES["forecasts"],
        {"zone": zone, "target": target, "model": model, "run_id": run_id},
        params,
    )
