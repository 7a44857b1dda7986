"""Shared solver plumbing for the optimization problems: solve options, solve info, and the pywraplp wrapper.

Belongs here: what every problem module needs to create an OR-Tools solver, apply the time limit and the
relative MIP gap, and turn the solver's answer into a `SolveInfo`. Problem formulations live in their own
modules (`storage`, `bidding`, `unit_commitment`).

OR-Tools 9.15 bundles GLOP/CLP/PDLP (LP), HiGHS (LP and MILP), SCIP and CBC (MILP) and CP-SAT behind
`pywraplp`; we use GLOP for LPs (fast, exact duals) and SCIP for MILPs by default.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Literal

from ortools.linear_solver import pywraplp
from pydantic import BaseModel, ConfigDict, Field

# Absolute tolerance used when checking schedules and curves against their constraints.
FEASIBILITY_TOL = 1e-6


class StrictModel(BaseModel):
    """Base for every input/output model: unknown fields and NaN/inf are rejected with the field's name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SolveOptions(StrictModel):
    """Limits for one solve. Defaults: 2 s hard limit, relative gap at most 0.1 % (the day-ahead budget)."""

    time_limit_s: float = Field(default=2.0, gt=0, le=600, description="Hard wall-clock limit per solve.")
    relative_gap: float = Field(default=0.001, ge=0, le=0.001, description="Relative MIP gap (≤ 0.1 %).")
    lp_solver: Literal["GLOP", "HIGHS_LP", "CLP"] = "GLOP"
    # HiGHS is bundled too, but its pywraplp MIP interface returned no solution on our models in 9.15.
    mip_solver: Literal["SCIP", "CBC"] = "SCIP"
    warm_start_commitment: dict[str, list[int]] | None = Field(
        default=None,
        description="Unit commitment only: an on/off schedule per unit_id (0/1 per hour), usually a similar "
        "past run's (ml.optimization.embedding.commitment_warm_start), handed to the MIP solver as a start.",
    )


class SolveStatus(StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # stopped by the time limit with an incumbent
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    NOT_SOLVED = "not_solved"


class SolveInfo(StrictModel):
    """What the solver said about one problem (after all LP/MILP passes)."""

    status: SolveStatus
    objective: float | None = None
    best_bound: float | None = None
    relative_gap: float | None = None
    solve_time_s: float = 0.0
    solver: str = ""
    hit_time_limit: bool = False
    binaries: int = Field(default=0, description="Binary variables in the final model.")
    passes: int = Field(default=1, description="LP/MILP passes (LP first, binaries added where needed).")
    warm_start: bool = Field(
        default=False, description="The MIP started from a complete feasible solution of a similar past run."
    )


_STATUS = {
    pywraplp.Solver.OPTIMAL: SolveStatus.OPTIMAL,
    pywraplp.Solver.FEASIBLE: SolveStatus.FEASIBLE,
    pywraplp.Solver.INFEASIBLE: SolveStatus.INFEASIBLE,
    pywraplp.Solver.UNBOUNDED: SolveStatus.UNBOUNDED,
}


def new_solver(name: str) -> pywraplp.Solver:
    """A fresh pywraplp solver; raises if this OR-Tools build lacks it."""
    solver = pywraplp.Solver.CreateSolver(name)
    if solver is None:
        raise RuntimeError(f"OR-Tools solver {name!r} is not available in this build")
    return solver


def run_solver(
    solver: pywraplp.Solver, *, time_limit_s: float, relative_gap: float, is_mip: bool
) -> tuple[SolveStatus, float, bool]:
    """Solve with the limits applied; (status, wall seconds, whether the time limit was hit)."""
    solver.SetTimeLimit(max(1, int(time_limit_s * 1000)))
    params = pywraplp.MPSolverParameters()
    if is_mip:
        params.SetDoubleParam(params.RELATIVE_MIP_GAP, relative_gap)
    started = time.perf_counter()
    code = solver.Solve(params)
    elapsed = time.perf_counter() - started
    status = _STATUS.get(code, SolveStatus.NOT_SOLVED)
    # pywraplp reports FEASIBLE (or NOT_SOLVED) when it stopped on the limit rather than proving optimality.
    hit_limit = status in (SolveStatus.FEASIBLE, SolveStatus.NOT_SOLVED) and elapsed >= 0.95 * time_limit_s
    return status, elapsed, hit_limit


def mip_gap(objective: float | None, bound: float | None) -> float | None:
    """Relative gap |bound − objective| / max(1, |objective|), the convention used in every SolveInfo."""
    if objective is None or bound is None:
        return None
    return abs(bound - objective) / max(1.0, abs(objective))
