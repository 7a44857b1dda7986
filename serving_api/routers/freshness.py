"""Freshness and quality of each gold table, from Dagster's instance."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serving_api.deps import Principal, authenticate
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import FreshnessResponse
from serving_api.security import Permission

router = APIRouter(tags=["freshness"], responses=error_responses(*STANDARD_ERRORS))


@router.get(
    "/freshness",
    response_model=FreshnessResponse,
    summary="Last materialization and latest check results per gold table",
)
async def freshness(request: Request, principal: Annotated[Principal, Depends(authenticate)]):
    if not principal.can(Permission.market_read):
        raise ApiError(403, "forbidden", "missing permission market:read")
    reader = request.app.state.api.freshness
    try:
        return await asyncio.to_thread(reader.status)
    except Exception as exc:
        raise ApiError(503, "dagster_unavailable", "the Dagster instance could not be read") from exc
