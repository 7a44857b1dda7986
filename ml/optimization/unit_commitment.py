"""Unit commitment: commit and dispatch thermal units to meet zone load plus reserve at least cost.

Belongs here: the unit-commitment input/output models, the MILP, the LP-with-fixed-commitment pass that
gives hourly marginal prices (duals of the load balance and reserve rows), and the infeasibility diagnosis.

Infeasibility is never silent: before solving, an analytic pass checks each hour for installed capacity
below load + reserve, must-run minimum output above load and ramp limits that cannot reach the load from
the initial state; if the MILP is still infeasible an elastic copy (load and reserve slacks, minimise total
slack) names the hours and rows that cannot be met.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from pydantic import Field, model_validator

from ml.optimization.common import (
    SolveInfo,
    SolveOptions,
    SolveStatus,
    StrictModel,
    mip_gap,
    new_solver,
    run_solver,
)
from ml.optimization.thermal import ThermalUnit, UnitVars, add_thermal_unit, unit_schedule_violations


class UnitCommitmentInput(StrictModel):
    zone: str | None = None
    start: datetime | None = Field(default=None, description="Start of the first hour (UTC).")
    load_forecast_mw: list[float] = Field(min_length=1, max_length=168)
    reserve_mw: list[float] | None = Field(default=None, description="Reserve per hour; None = reserve_fraction.")
    reserve_fraction: float = Field(default=0.0, ge=0, le=1, description="Reserve as a share of load.")
    horizon_hours: int | None = Field(default=None, gt=0, le=168)
    units: list[ThermalUnit] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> UnitCommitmentInput:
        n = len(self.load_forecast_mw)
        if self.horizon_hours is not None and self.horizon_hours != n:
            raise ValueError(
                f"load_forecast_mw has {n} hours but horizon_hours is {self.horizon_hours} "
                "(horizon mismatch with forecast)"
            )
        neg = [t for t, x in enumerate(self.load_forecast_mw) if x < 0]
        if neg:
            raise ValueError(f"load_forecast_mw is negative at hours {neg[:5]}")
        if self.reserve_mw is not None:
            if len(self.reserve_mw) != n:
                raise ValueError(f"reserve_mw has {len(self.reserve_mw)} hours, load_forecast_mw has {n}")
            if any(r < 0 for r in self.reserve_mw):
                raise ValueError("reserve_mw must be non-negative")
        ids = [u.unit_id for u in self.units]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"units: unit_id repeated: {dupes}")
        return self

    @property
    def hours(self) -> int:
        return len(self.load_forecast_mw)

    def reserve(self) -> list[float]:
        if self.reserve_mw is not None:
            return list(self.reserve_mw)
        return [self.reserve_fraction * x for x in self.load_forecast_mw]


class InfeasibilityDiagnostic(StrictModel):
    constraint: str = Field(description="capacity | min_output | ramp_up | ramp_down | load_balance | reserve")
    hour: int
    shortfall_mw: float = Field(description="How far the constraint is from being met (MW).")
    detail: str


class UnitHour(StrictModel):
    unit_id: str
    hour: int
    start: datetime | None
    on: bool
    started: bool
    output_mw: float
    cost: float


class SystemHour(StrictModel):
    hour: int
    start: datetime | None
    load_mw: float
    reserve_mw: float
    committed_capacity_mw: float
    marginal_price: float | None = Field(default=None, description="Load-balance dual with commitment fixed.")
    reserve_price: float | None = None


class UnitCommitmentResult(StrictModel):
    info: SolveInfo
    total_cost: float | None = None
    units: list[UnitHour] = Field(default_factory=list)
    system: list[SystemHour] = Field(default_factory=list)
    diagnostics: list[InfeasibilityDiagnostic] = Field(default_factory=list)


def infeasibility_diagnostics(inp: UnitCommitmentInput) -> list[InfeasibilityDiagnostic]:
    """Hours where load + reserve provably cannot be met, and the constraint that binds there."""
    out: list[InfeasibilityDiagnostic] = []
    reserve = inp.reserve()
    for t, load in enumerate(inp.load_forecast_mw):
        need = load + reserve[t]
        available = sum(u.max_output_mw for u in inp.units if not _locked_off(u, t))
        if available < need - 1e-6:
            out.append(
                InfeasibilityDiagnostic(
                    constraint="capacity",
                    hour=t,
                    shortfall_mw=need - available,
                    detail=f"capacity {available:.1f} MW < load {load:.1f} + reserve {reserve[t]:.1f} MW at hour {t}",
                )
            )
        reach = sum(_max_reachable(u, t) for u in inp.units)
        if reach < load - 1e-6 and available >= load:
            out.append(
                InfeasibilityDiagnostic(
                    constraint="ramp_up",
                    hour=t,
                    shortfall_mw=load - reach,
                    detail=f"ramp limits: at most {reach:.1f} MW reachable by hour {t} from the initial "
                    "state, "
                    f"load is {load:.1f} MW",
                )
            )
        floor = sum(_min_forced(u, t) for u in inp.units)
        if floor > load + 1e-6:
            out.append(
                InfeasibilityDiagnostic(
                    constraint="min_output",
                    hour=t,
                    shortfall_mw=floor - load,
                    detail=f"units that must stay on produce at least {floor:.1f} MW "
                    "(min output / ramp down) "
                    f"> load {load:.1f} MW at hour {t}",
                )
            )
    return out


def _locked_off(u: ThermalUnit, t: int) -> bool:
    return not u.initial_on and t < u.must_stay_hours


def _max_reachable(u: ThermalUnit, t: int) -> float:
    if _locked_off(u, t):
        return 0.0
    if u.ramp_up_mw_per_h is None:
        return u.max_output_mw
    if u.initial_on:
        return min(u.max_output_mw, u.initial_output_mw + u.ramp_up_mw_per_h * (t + 1))
    first = u.must_stay_hours
    return min(u.max_output_mw, u.startup_ramp_mw + u.ramp_up_mw_per_h * (t - first))


def _min_forced(u: ThermalUnit, t: int) -> float:
    if not u.initial_on:
        return 0.0
    locked = t < u.must_stay_hours
    if u.ramp_down_mw_per_h is None:
        return u.min_output_mw if locked else 0.0
    ramped = u.initial_output_mw - u.ramp_down_mw_per_h * (t + 1)
    if locked:
        return max(u.min_output_mw, ramped)
    # It may shut down once its output is within the shut-down ramp.
    return 0.0 if ramped - u.ramp_down_mw_per_h <= u.shutdown_ramp_mw else max(u.min_output_mw, ramped)


class _Model:
    def __init__(self, inp: UnitCommitmentInput, solver_name: str, *, elastic: bool, fixed_on: dict | None):
        s = self.solver = new_solver(solver_name)
        s.SuppressOutput()
        hours, reserve = inp.hours, inp.reserve()
        self.vars: dict[str, UnitVars] = {}
        for i, u in enumerate(inp.units):
            v = add_thermal_unit(s, u, hours, f"g{i}")
            if fixed_on is not None:
                for t in range(hours):
                    v.on[t].SetBounds(fixed_on[u.unit_id][t], fixed_on[u.unit_id][t])
            self.vars[u.unit_id] = v
        self.short, self.surplus, self.res_short = [], [], []
        self.balance, self.reserve_rows = [], []
        for t in range(hours):
            supply = sum(v.output[t] for v in self.vars.values())
            committed = sum(u.max_output_mw * self.vars[u.unit_id].on[t] for u in inp.units)
            if elastic:
                sh, su, rs = (
                    s.NumVar(0, s.infinity(), f"sh{t}"),
                    s.NumVar(0, s.infinity(), f"su{t}"),
                    s.NumVar(0, s.infinity(), f"rs{t}"),
                )
                self.short.append(sh)
                self.surplus.append(su)
                self.res_short.append(rs)
                self.balance.append(s.Add(supply + sh - su == inp.load_forecast_mw[t]))
                self.reserve_rows.append(s.Add(committed + sh + rs >= inp.load_forecast_mw[t] + reserve[t]))
            else:
                self.balance.append(s.Add(supply == inp.load_forecast_mw[t]))
                self.reserve_rows.append(s.Add(committed >= inp.load_forecast_mw[t] + reserve[t]))
        if elastic:
            s.Minimize(sum(self.short) + sum(self.surplus) + sum(self.res_short))
        else:
            s.Minimize(sum(_unit_cost(u, self.vars[u.unit_id], t) for u in inp.units for t in range(hours)))


def _unit_cost(u: ThermalUnit, v: UnitVars, t: int):
    return u.marginal_cost * v.output[t] + u.no_load_cost * v.on[t] + u.startup_cost * v.start[t]


def solve_unit_commitment(inp: UnitCommitmentInput, options: SolveOptions | None = None) -> UnitCommitmentResult:
    """Least-cost commitment and dispatch, or an infeasible result whose diagnostics name the binding rows."""
    options = options or SolveOptions()
    started = time.perf_counter()
    diagnostics = infeasibility_diagnostics(inp)
    if diagnostics:
        return UnitCommitmentResult(
            info=SolveInfo(
                status=SolveStatus.INFEASIBLE,
                solve_time_s=time.perf_counter() - started,
                solver="diagnostic pass",
                passes=0,
            ),
            diagnostics=diagnostics,
        )
    model = _Model(inp, options.mip_solver, elastic=False, fixed_on=None)
    warm_started = False
    if options.warm_start_commitment:
        warm_started = _apply_warm_start(model, inp, options.warm_start_commitment, options)
    status, _, hit = run_solver(
        model.solver, time_limit_s=options.time_limit_s, relative_gap=options.relative_gap, is_mip=True
    )
    binaries = inp.hours * len(inp.units)
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        remaining = max(0.1, options.time_limit_s - (time.perf_counter() - started))
        diagnostics = _elastic_diagnostics(inp, options.model_copy(update={"time_limit_s": remaining}))
        return UnitCommitmentResult(
            info=SolveInfo(
                status=status,
                solve_time_s=time.perf_counter() - started,
                solver=model.solver.SolverVersion(),
                hit_time_limit=hit,
                binaries=binaries,
            ),
            diagnostics=diagnostics,
        )
    objective = model.solver.Objective().Value()
    bound = model.solver.Objective().BestBound()
    on = {uid: [round(x.solution_value()) for x in v.on] for uid, v in model.vars.items()}
    duals = _fixed_commitment_duals(inp, on, options)
    info = SolveInfo(
        status=status,
        objective=objective,
        best_bound=bound,
        relative_gap=mip_gap(objective, bound),
        solve_time_s=time.perf_counter() - started,
        solver=model.solver.SolverVersion(),
        hit_time_limit=hit,
        binaries=binaries,
        passes=2 if duals else 1,
        warm_start=warm_started,
    )
    starts = [inp.start + timedelta(hours=t) if inp.start else None for t in range(inp.hours)]
    unit_rows = []
    for u in inp.units:
        v = model.vars[u.unit_id]
        prev = u.initial_on
        for t in range(inp.hours):
            is_on = bool(on[u.unit_id][t])
            p = v.output[t].solution_value() if is_on else 0.0
            unit_rows.append(
                UnitHour(
                    unit_id=u.unit_id,
                    hour=t,
                    start=starts[t],
                    on=is_on,
                    started=is_on and not prev,
                    output_mw=p,
                    cost=u.marginal_cost * p + u.no_load_cost * is_on + u.startup_cost * (is_on and not prev),
                )
            )
            prev = is_on
    reserve = inp.reserve()
    system = [
        SystemHour(
            hour=t,
            start=starts[t],
            load_mw=inp.load_forecast_mw[t],
            reserve_mw=reserve[t],
            committed_capacity_mw=sum(u.max_output_mw * on[u.unit_id][t] for u in inp.units),
            marginal_price=duals[0][t] if duals else None,
            reserve_price=duals[1][t] if duals else None,
        )
        for t in range(inp.hours)
    ]
    return UnitCommitmentResult(info=info, total_cost=sum(r.cost for r in unit_rows), units=unit_rows, system=system)


def _repaired_commitment(inp: UnitCommitmentInput, commitment: dict[str, list[int]]) -> dict[str, list[int]]:
    """A neighbour's on/off schedule adapted to `inp`: aligned to its units and hours, then, hour by hour,
    the cheapest units switched on (for their minimum up time) until load + reserve is covered, and off gaps
    shorter than a unit's minimum down time filled. A heuristic: the fixed-commitment LP decides whether the
    result is feasible."""
    hours, reserve = inp.hours, inp.reserve()
    fixed = {}
    for u in inp.units:
        plan = [int(bool(v)) for v in (commitment.get(u.unit_id) or [])][:hours]
        fixed[u.unit_id] = plan + [plan[-1] if plan else 0] * (hours - len(plan))
        if u.must_stay_hours:
            for t in range(min(hours, u.must_stay_hours)):
                fixed[u.unit_id][t] = int(u.initial_on)
    merit = sorted(inp.units, key=lambda u: u.marginal_cost + u.no_load_cost / u.max_output_mw)
    for t in range(hours):
        capacity = sum(u.max_output_mw for u in inp.units if fixed[u.unit_id][t])
        for u in merit:
            if capacity >= inp.load_forecast_mw[t] + reserve[t]:
                break
            if fixed[u.unit_id][t] or (t < u.must_stay_hours and not u.initial_on):
                continue
            for k in range(t, min(hours, t + u.min_up_hours)):
                fixed[u.unit_id][k] = 1
            capacity += u.max_output_mw
    for u in inp.units:
        plan, prev_on, gap_start = fixed[u.unit_id], u.initial_on, None
        for t in range(hours):
            if not plan[t] and prev_on:
                gap_start = t
            if plan[t] and gap_start is not None:
                if t - gap_start < u.min_down_hours:
                    plan[gap_start:t] = [1] * (t - gap_start)
                gap_start = None
            prev_on = bool(plan[t])
    return fixed


def _apply_warm_start(
    model: _Model, inp: UnitCommitmentInput, commitment: dict[str, list[int]], options: SolveOptions
) -> bool:
    """Hand a similar past run's `commitment` to the MIP solver as a start; whether it was a complete one.

    The schedule is adapted to this input (`_repaired_commitment`) and completed into a full solution
    (dispatch, starts and stops) by the LP with that commitment fixed; SCIP then starts from a feasible
    incumbent. When the adapted commitment is still infeasible (a ramp or a locked unit), only the on/off
    values are hinted and SCIP completes them itself if it can.
    """
    fixed = _repaired_commitment(inp, commitment)
    repair = _Model(inp, options.lp_solver, elastic=False, fixed_on=fixed)
    status, _, _ = run_solver(
        repair.solver, time_limit_s=max(0.1, options.time_limit_s / 10), relative_gap=0.0, is_mip=False
    )
    variables, values = [], []
    complete = status == SolveStatus.OPTIMAL
    for uid, v in model.vars.items():
        if complete:
            w = repair.vars[uid]
            for mine, theirs in ((v.on, w.on), (v.start, w.start), (v.stop, w.stop), (v.output, w.output)):
                variables += mine
                values += [x.solution_value() for x in theirs]
        else:
            variables += v.on
            values += [float(x) for x in fixed[uid]]
    model.solver.SetHint(variables, values)
    return complete


def _fixed_commitment_duals(
    inp: UnitCommitmentInput, on: dict[str, list[int]], options: SolveOptions
) -> tuple[list[float], list[float]] | None:
    lp = _Model(inp, options.lp_solver, elastic=False, fixed_on=on)
    status, _, _ = run_solver(lp.solver, time_limit_s=options.time_limit_s, relative_gap=0.0, is_mip=False)
    if status != SolveStatus.OPTIMAL:
        return None
    return [c.dual_value() for c in lp.balance], [c.dual_value() for c in lp.reserve_rows]


def _elastic_diagnostics(inp: UnitCommitmentInput, options: SolveOptions) -> list[InfeasibilityDiagnostic]:
    model = _Model(inp, options.mip_solver, elastic=True, fixed_on=None)
    status, _, _ = run_solver(
        model.solver, time_limit_s=options.time_limit_s, relative_gap=options.relative_gap, is_mip=True
    )
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return [
            InfeasibilityDiagnostic(
                constraint="unknown",
                hour=-1,
                shortfall_mw=0.0,
                detail=f"elastic model also {status}; unit constraints conflict",
            )
        ]
    out = []
    for t in range(inp.hours):
        for name, var, what in (
            ("load_balance", model.short[t], "load cannot be met (min up/down or ramp limits)"),
            ("load_balance", model.surplus[t], "output cannot go down to load (min output, min up time)"),
            ("reserve", model.res_short[t], "committed capacity cannot cover load + reserve"),
        ):
            x = var.solution_value()
            if x > 1e-6:
                out.append(
                    InfeasibilityDiagnostic(
                        constraint=name,
                        hour=t,
                        shortfall_mw=x,
                        detail=f"hour {t}: {what}; short by {x:.2f} MW",
                    )
                )
    return out


def unit_commitment_violations(inp: UnitCommitmentInput, result: UnitCommitmentResult, tol: float = 1e-4) -> list[str]:
    """Every constraint the result breaks: unit technical limits, load balance and reserve per hour."""
    out: list[str] = []
    by_unit: dict[str, list[UnitHour]] = {}
    for row in result.units:
        by_unit.setdefault(row.unit_id, []).append(row)
    reserve = inp.reserve()
    for u in inp.units:
        rows = sorted(by_unit.get(u.unit_id, []), key=lambda r: r.hour)
        if len(rows) != inp.hours:
            out.append(f"{u.unit_id}: {len(rows)} hours scheduled, expected {inp.hours}")
            continue
        out += unit_schedule_violations(u, [r.on for r in rows], [r.output_mw for r in rows], tol)
    for t in range(inp.hours):
        rows = [r for r in result.units if r.hour == t]
        supply = sum(r.output_mw for r in rows)
        if abs(supply - inp.load_forecast_mw[t]) > tol * max(1.0, inp.load_forecast_mw[t]):
            out.append(f"hour {t}: supply {supply:.3f} != load {inp.load_forecast_mw[t]}")
        cap = sum(u.max_output_mw for u in inp.units for r in rows if r.unit_id == u.unit_id and r.on)
        if cap < inp.load_forecast_mw[t] + reserve[t] - tol:
            out.append(f"hour {t}: committed capacity {cap} < load + reserve {inp.load_forecast_mw[t] + reserve[t]}")
    return out
