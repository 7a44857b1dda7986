"""Zones, nodes and the caller's assets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from serving_api import repository
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import ZONE_PATTERN, Asset, Node, Zone
from serving_api.security import Permission

router = APIRouter(tags=["reference"], responses=error_responses(*STANDARD_ERRORS))
ZoneQuery = Annotated[str | None, Query(pattern=ZONE_PATTERN)]


@router.get("/zones", response_model=list[Zone], summary="Market zones")
async def zones(session: Annotated[OrgSession, Depends(scoped(Permission.market_read))]):
    return await repository.zones(await session.conn())


@router.get("/nodes", response_model=list[Node], summary="Pricing nodes, optionally of one zone")
async def nodes(
    session: Annotated[OrgSession, Depends(scoped(Permission.market_read))], zone: ZoneQuery = None
):
    return await repository.nodes(await session.conn(), zone)


@router.get("/assets", response_model=list[Asset], summary="Assets of the caller's organization")
async def assets(
    session: Annotated[OrgSession, Depends(scoped(Permission.org_read))], zone: ZoneQuery = None
):
    return await repository.assets(await session.conn(), zone)
