"""KPI catalogue and values."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from serving_api import repository
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import CODE_PATTERN, ZONE_PATTERN, KpiDefinition, KpiValuePage
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["kpis"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.market_read))]


@router.get("/kpis", response_model=list[KpiDefinition], summary="KPI catalogue")
async def kpi_catalog(request: Request, session: Session):
    state = request.app.state.api
    return await repository.kpi_catalog(state, await session.conn())


@router.get(
    "/kpis/{code}",
    response_model=KpiValuePage,
    summary="Values of one KPI",
    responses={**tabular_responses(KpiValuePage), **error_responses(404)},
)
async def kpi_values(
    request: Request,
    session: Session,
    code: Annotated[str, Path(pattern=CODE_PATTERN)],
    params: Annotated[TableParams, Depends(table_params)],
    zone: Annotated[str | None, Query(pattern=ZONE_PATTERN)] = None,
    grain: Literal["minute", "hour", "day"] = "hour",
):
    state = request.app.state.api

    async def known_kpi() -> None:
        if not await repository.kpi_catalog(state, await session.conn(), code):
            raise ApiError(404, "not_found", f"unknown KPI {code!r}")

    return await tabular_response(
        request,
        session,
        SERVED_TABLES["kpi_values"],
        {"kpi_code": code, "zone": zone, "grain": grain},
        params,
        precheck=known_kpi,
    )
