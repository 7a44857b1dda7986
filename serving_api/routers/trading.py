"""The caller's organization's trading facts from gold: bids, trades and net positions (dbt marts
`fct_bids`, `fct_trades`, `fct_positions`), paged, filtered and exportable like every tabular endpoint.

`from`/`to` filter the delivery hour (`delivery_start`). Row-level security decides which rows exist: an
organization sees its own trading data only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import CODE_PATTERN, ZONE_PATTERN, BidPage, PositionPage, TradePage
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["trading"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]
Params = Annotated[TableParams, Depends(table_params)]
ZoneQuery = Annotated[str | None, Query(pattern=ZONE_PATTERN)]
IdQuery = Annotated[str | None, Query(pattern=CODE_PATTERN)]
SideQuery = Annotated[Literal["buy", "sell"] | None, Query()]


@router.get(
    "/bids",
    response_model=BidPage,
    responses=tabular_responses(BidPage),
    summary="Bids of the caller's organization, in their current state (gold.fct_bids)",
)
async def bids(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    asset_id: IdQuery = None,
    side: SideQuery = None,
    status: Annotated[
        Literal["submitted", "accepted", "partially_accepted", "rejected", "cancelled"] | None, Query()
    ] = None,
    bid_id: IdQuery = None,
):
    filters = {"zone": zone, "asset_id": asset_id, "side": side, "status": status, "bid_id": bid_id}
    return await tabular_response(request, session, SERVED_TABLES["bids"], filters, params)


@router.get(
    "/trades",
    response_model=TradePage,
    responses=tabular_responses(TradePage),
    summary="Trades of the caller's organization (gold.fct_trades)",
)
async def trades(
    request: Request,
    session: Session,
    params: Params,
    zone: ZoneQuery = None,
    side: SideQuery = None,
    bid_id: Annotated[str | None, Query(pattern=CODE_PATTERN, description="trades executing this bid")] = None,
    trade_id: IdQuery = None,
    counterparty: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
):
    filters = {"zone": zone, "side": side, "bid_id": bid_id, "trade_id": trade_id, "counterparty": counterparty}
    return await tabular_response(request, session, SERVED_TABLES["trades"], filters, params)


@router.get(
    "/positions",
    response_model=PositionPage,
    responses=tabular_responses(PositionPage),
    summary="Net position and cash flow per zone and delivery hour (gold.fct_positions)",
)
async def positions(request: Request, session: Session, params: Params, zone: ZoneQuery = None):
    return await tabular_response(request, session, SERVED_TABLES["positions"], {"zone": zone}, params)
