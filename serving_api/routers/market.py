"""Prices, load and generation time series (cursor pages, field selection, exports)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import ZONE_PATTERN, PricePage, SeriesPage
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["market data"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.market_read))]
Params = Annotated[TableParams, Depends(table_params)]
ZoneQuery = Annotated[str | None, Query(pattern=ZONE_PATTERN)]


@router.get(
    "/prices",
    response_model=PricePage,
    responses=tabular_responses(PricePage),
    summary="Zone prices (hourly) or node prices (5min)",
)
async def prices(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    granularity: Literal["hour", "5min"] = "hour",
    market: Annotated[str | None, Query(pattern=r"^[A-Za-z]{1,10}$", description="DA or RT (hourly)")] = None,
    node: Annotated[str | None, Query(pattern=ZONE_PATTERN, description="node (5min)")] = None,
):
    if granularity == "hour":
        return await tabular_response(
            request, session, SERVED_TABLES["prices_hourly"], {"zone": zone, "market": market}, params
        )
    return await tabular_response(
        request, session, SERVED_TABLES["prices_5min"], {"zone": zone, "node": node}, params
    )


@router.get(
    "/load", response_model=SeriesPage, responses=tabular_responses(SeriesPage), summary="Hourly load"
)
async def load(request: Request, session: Session, params: Params, zone: ZoneQuery = None):
    return await tabular_response(request, session, SERVED_TABLES["load_hourly"], {"zone": zone}, params)


@router.get(
    "/generation",
    response_model=SeriesPage,
    responses=tabular_responses(SeriesPage),
    summary="Hourly generation by fuel",
)
async def generation(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    fuel: Annotated[str | None, Query(pattern=r"^[A-Za-z_]{1,40}$")] = None,
):
    return await tabular_response(
        request, session, SERVED_TABLES["generation_hourly"], {"zone": zone, "fuel": fuel}, params
    )
