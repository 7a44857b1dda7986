"""Stored optimization runs and results of the caller's organization: storage schedules, bid curves, unit
commitment, as the daily optimization assets wrote them (paged, filtered, exportable).

Solving a problem on request is `serving_api.routers.on_demand_solves`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, error_responses
from serving_api.models import CODE_PATTERN, GenericPage
from serving_api.repository import SERVED_TABLES
from serving_api.security import Permission
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

router = APIRouter(tags=["optimization"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]
Params = Annotated[TableParams, Depends(table_params)]
IdQuery = Annotated[str | None, Query(pattern=CODE_PATTERN)]


@router.get(
    "/optimization/runs",
    response_model=GenericPage,
    responses=tabular_responses(GenericPage),
    summary="Optimization runs (status, objective, solver) from ml.optimization_runs",
)
async def optimization_runs(
    request: Request,
    session: Session,
    params: Params,
    problem: Annotated[Literal["storage_dispatch", "bid_curves", "unit_commitment"] | None, Query()] = None,
    run_id: IdQuery = None,
):
    return await tabular_response(
        request, session, SERVED_TABLES["optimization_runs"], {"problem": problem, "run_id": run_id}, params
    )


@router.get(
    "/optimization/{kind}",
    response_model=GenericPage,
    responses=tabular_responses(GenericPage),
    summary="Rows of one optimization result table (`from`/`to` filter the interval start)",
)
async def optimization_results(
    request: Request,
    session: Session,
    kind: Annotated[Literal["storage_schedules", "bid_curves", "unit_commitment"], Path()],
    params: Params,
    run_id: IdQuery = None,
    asset_id: Annotated[
        str | None, Query(pattern=CODE_PATTERN, description="asset (unit for unit_commitment)")
    ] = None,
):
    filters = {"run_id": run_id, ("unit_id" if kind == "unit_commitment" else "asset_id"): asset_id}
    return await tabular_response(request, session, SERVED_TABLES[kind], filters, params)
