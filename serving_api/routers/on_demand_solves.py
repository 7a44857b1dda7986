"""On-demand optimization: solve a storage dispatch, bid curves or a unit commitment for the caller's org.

`POST /optimize/storage`, `/optimize/bids`, `/optimize/unit-commitment` take the library's pydantic input
models (`ml.optimization`), so bad input is a 422 whose details name the field (negative capacity, inverted
SoC bounds, horizon mismatch, unreachable terminal SoC, oversized requests). Every dimension is bounded
before the library builds anything: the horizon (`MAX_HOURS` hourly values, `MAX_INTERVALS` sub-hourly
ones), assets, quantile paths and magnitudes, and the body itself (`ApiOptions.max_body_bytes`, refused by
`serving_api.guard` before it is read). The solve runs in one of the API's solver processes
(`serving_api.solver`, `OPTIBID_API_SOLVER_PROCESSES` of them, at a lower CPU priority); a request waits at
most `ApiOptions.solver_queue_wait_s` for a free one (503 `solver_busy` with Retry-After otherwise). The
solver's own time limit, capped at `MAX_TIME_LIMIT_S`, normally ends the solve; `ApiOptions.optimize_timeout_s`
is a hard wall-clock bound, model building included, after which the process is killed and the client gets
503 `solver_timeout`. Every
run, infeasible ones included, is stored in ml.optimization_runs for the caller's organization
(row-level security: the API role may only insert rows of its own org). A unit commitment whose demand
cannot be met answers 422 naming `load_forecast_mw` with the diagnostics and the stored run id.

`/optimize/grid-switching` is a deprecated alias of `/optimize/unit-commitment` (same handler): unit
commitment decides which units to switch on, hour by hour, to meet the load. Stored results of the daily
optimization are served by `serving_api.routers.optimization_results`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml.optimization import (
    BidCurveInput,
    BidCurveResult,
    SolveOptions,
    StorageDispatchInput,
    StorageSchedule,
    UnitCommitmentInput,
    UnitCommitmentResult,
    market_rules_for,
    run_insert_statement,
    run_params,
    run_record,
)
from serving_api import repository, similarity
from serving_api.deps import OrgSession, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_body, error_responses
from serving_api.security import Permission
from serving_api.solver import SolverBusy, SolverCrashed, SolveTimeout, SolveValidationError
from serving_api.state import ApiState

log = logging.getLogger(__name__)

MAX_TIME_LIMIT_S = 10.0
# Request size limits: the solve is time-limited, building the model is not.
MAX_ABS_VALUE = 1e7
MAX_ASSETS = 50
MAX_QUANTILES = 20
MAX_HOURS = 168  # a week of hourly values (bids, unit commitment)
MAX_INTERVALS = 168 * 12  # a week of 5-minute intervals (storage dispatch)

router = APIRouter(tags=["optimize"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.optimize_write))]


def _too_large(value: Any, path: str) -> str | None:
    """Why `value` is too big to model: a number beyond ±MAX_ABS_VALUE or a list beyond MAX_INTERVALS items
    (the path and the limit); None if nothing is."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if abs(value) > MAX_ABS_VALUE:
            return f"{path} exceeds ±{MAX_ABS_VALUE:g} (values are MW, MWh or currency/MWh)"
        return None
    if isinstance(value, list) and len(value) > MAX_INTERVALS:
        return f"{path} has {len(value)} items; at most {MAX_INTERVALS}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _too_large(item, f"{path}.{key}")
        if found:
            return found
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_limit_s: float = Field(
        default=2.0,
        gt=0,
        le=MAX_TIME_LIMIT_S,
        description=f"Solver time limit (at most {MAX_TIME_LIMIT_S:g} s).",
    )

    @model_validator(mode="before")
    @classmethod
    def _magnitudes(cls, data: Any) -> Any:
        # Model building is not under the time limit, and huge numbers only overflow the solver: refuse both.
        problem = _too_large(data.get("input"), "input") if isinstance(data, dict) else None
        if problem:
            raise ValueError(problem)
        return data


class StorageRequest(_Request):
    input: StorageDispatchInput

    @field_validator("input")
    @classmethod
    def _size(cls, value: StorageDispatchInput) -> StorageDispatchInput:
        if value.price_quantiles and len(value.price_quantiles) > MAX_QUANTILES:
            raise ValueError(
                f"input.price_quantiles has {len(value.price_quantiles)} paths; at most {MAX_QUANTILES}"
            )
        return value


class BidsRequest(_Request):
    input: BidCurveInput

    @field_validator("input")
    @classmethod
    def _size(cls, value: BidCurveInput) -> BidCurveInput:
        assets = len(value.renewables) + len(value.thermal) + len(value.storage)
        if assets > MAX_ASSETS:
            raise ValueError(f"input has {assets} assets; at most {MAX_ASSETS} per request")
        if len(value.price_quantiles) > MAX_QUANTILES:
            raise ValueError(
                f"input.price_quantiles has {len(value.price_quantiles)} paths; at most {MAX_QUANTILES}"
            )
        if value.hours > MAX_HOURS:
            raise ValueError(f"input.price_quantiles covers {value.hours} hours; at most {MAX_HOURS}")
        return value


class UnitCommitmentRequest(_Request):
    input: UnitCommitmentInput

    @field_validator("input")
    @classmethod
    def _size(cls, value: UnitCommitmentInput) -> UnitCommitmentInput:
        if len(value.units) > MAX_ASSETS:
            raise ValueError(f"input.units has {len(value.units)} units; at most {MAX_ASSETS} per request")
        return value


class OptimizeResponse(BaseModel):
    run_id: str = Field(
        description="Stored in ml.optimization_runs; GET /optimization/runs?run_id=… reads it."
    )
    problem: Literal["storage_dispatch", "bid_curves", "unit_commitment"]
    status: str
    objective: float | None
    relative_gap: float | None
    solve_time_s: float
    hit_time_limit: bool
    outputs: dict[str, Any]
    explanations: list[str] = Field(description="Why the solution looks the way it does, in words.")


def explanations_of(result: BaseModel) -> list[str]:
    """Human-readable reasons: per-interval rationale, curve notes, or commitment/diagnostic lines."""
    if isinstance(result, StorageSchedule):
        return [f"interval {i.index}: {i.rationale}" for i in result.intervals]
    if isinstance(result, BidCurveResult):
        rules = market_rules_for(result.market)
        assets = sorted({c.asset_id for c in result.curves})
        return [
            f"{len(result.curves)} hourly curves for {', '.join(assets)} under {rules.market} rules "
            f"(price {rules.price_floor:g}..{rules.price_cap:g} {rules.currency}, at most {rules.max_steps} "
            "steps, quantities rounded toward zero)",
            *result.notes,
        ]
    assert isinstance(result, UnitCommitmentResult)
    if result.diagnostics:
        return [d.detail for d in result.diagnostics]
    return [
        f"hour {s.hour}: {s.committed_capacity_mw:g} MW committed for load {s.load_mw:g} MW + reserve "
        f"{s.reserve_mw:g} MW"
        + (f", marginal price {s.marginal_price:.2f}" if s.marginal_price is not None else "")
        for s in result.system
    ]


async def _solve(state: ApiState, inp: BaseModel, options: SolveOptions) -> BaseModel:
    """The library's solve in a killable solver process (serving_api.solver), as HTTP errors."""
    assert state.solver is not None
    timeout_s = state.options.optimize_timeout_s
    try:
        return await state.solver.solve(inp, options, timeout_s)
    except SolverBusy:
        raise ApiError(
            503, "solver_busy", "every solver is busy; try again shortly", headers={"Retry-After": "5"}
        ) from None
    except SolveTimeout as exc:
        raise ApiError(
            503,
            "solver_timeout",
            f"the solve did not finish within {timeout_s:g} s and was stopped",
            {"elapsed_s": round(exc.elapsed_s, 2), "limit_s": timeout_s},
            headers={"Retry-After": "5"},
        ) from None
    except SolveValidationError as exc:
        # The library derives sub-problems (a battery's dispatch inside bidding) and validates them itself.
        first = exc.errors[0] if exc.errors else {}
        raise ApiError(
            422,
            "validation_error",
            f"input: {first.get('msg', 'invalid')}",
            {"field": "input", "errors": [e["msg"] for e in exc.errors][:5]},
        ) from None
    except SolverCrashed:
        log.exception("optimization solve failed")
        raise ApiError(503, "solver_failed", "the solver failed on this input; try again later") from None


async def _run(session: OrgSession, inp: BaseModel, time_limit_s: float) -> tuple[dict[str, Any], BaseModel]:
    # A unit commitment starts from the schedule of the organization's most similar past run.
    options, _ = await similarity.warm_start_options(session.conn, inp, SolveOptions(time_limit_s=time_limit_s))
    result = await _solve(session.state, inp, options)
    record = run_record(inp, result, options, org_id=session.principal.org_id)
    conn = await session.conn()
    await conn.execute(run_insert_statement(), run_params(record))
    await repository.audit(
        conn,
        session.principal.org_id,
        session.principal.actor,
        "optimize.run",
        record["run_id"],
        {"problem": record["problem"], "status": record["status"]},
    )
    return record, result


def _response(record: dict[str, Any], result: BaseModel) -> OptimizeResponse:
    return OptimizeResponse(
        run_id=record["run_id"],
        problem=record["problem"],
        status=record["status"],
        objective=record["objective"],
        relative_gap=record["relative_gap"],
        solve_time_s=record["solve_time_s"],
        hit_time_limit=record["hit_time_limit"],
        outputs=record["outputs"],
        explanations=explanations_of(result),
    )


def _unsolved(record: dict[str, Any], result: BaseModel, field: str) -> JSONResponse:
    # Returned, not raised: raising would roll back the transaction and lose the stored run.
    return JSONResponse(
        error_body(
            record["status"],
            f"{field}: no feasible solution ({record['status']})",
            {"run_id": record["run_id"], "field": field, "explanations": explanations_of(result)},
        ),
        status_code=422,
    )


_UNSOLVED = {422: error_responses(422)[422] | {"description": "Invalid input, or no feasible solution"}}


@router.post(
    "/optimize/storage",
    response_model=OptimizeResponse,
    responses=_UNSOLVED,
    summary="Battery charge/discharge schedule against a price forecast",
)
async def optimize_storage(body: StorageRequest, session: Session):
    record, result = await _run(session, body.input, body.time_limit_s)
    if not result.intervals:  # type: ignore[attr-defined]
        return _unsolved(record, result, "input")
    return _response(record, result)


@router.post(
    "/optimize/bids",
    response_model=OptimizeResponse,
    responses=_UNSOLVED,
    summary="Exchange-conforming hourly bid curves from a probabilistic price forecast",
)
async def optimize_bids(body: BidsRequest, session: Session):
    # One solve per thermal unit and battery: share the request's time limit between them.
    solves = max(1, len(body.input.thermal) + len(body.input.storage))
    try:
        record, result = await _run(session, body.input, body.time_limit_s / solves)
    except RuntimeError as exc:
        # The library raises when a unit's self-schedule or a storage dispatch has no solution.
        return JSONResponse(error_body("not_solved", f"input: {exc}", {"field": "input"}), status_code=422)
    return _response(record, result)


@router.post(
    "/optimize/unit-commitment",
    response_model=OptimizeResponse,
    responses=_UNSOLVED,
    summary="Unit commitment: which units to switch on each hour to meet load plus reserve",
)
@router.post(
    "/optimize/grid-switching",
    response_model=OptimizeResponse,
    responses=_UNSOLVED,
    summary="Unit commitment (deprecated path: use /optimize/unit-commitment)",
    deprecated=True,
)
async def optimize_unit_commitment(body: UnitCommitmentRequest, session: Session):
    record, result = await _run(session, body.input, body.time_limit_s)
    if not result.units:  # type: ignore[attr-defined]
        return _unsolved(record, result, "load_forecast_mw")
    return _response(record, result)
