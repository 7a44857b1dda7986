"""The thermal unit model shared by unit commitment and bid-curve building.

Belongs here: the `ThermalUnit` input model and the one function that adds a unit's commitment and dispatch
variables and technical constraints (min/max output, min up/down time, ramp limits with start-up/shut-down
allowance, initial state) to a pywraplp model. Objectives are the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortools.linear_solver import pywraplp
from pydantic import Field, model_validator

from ml.optimization.common import StrictModel


class ThermalUnit(StrictModel):
    unit_id: str = Field(min_length=1)
    min_output_mw: float = Field(ge=0)
    max_output_mw: float = Field(gt=0)
    marginal_cost: float = Field(description="Cost per MWh produced.")
    no_load_cost: float = Field(default=0.0, ge=0, description="Cost per hour while committed.")
    startup_cost: float = Field(default=0.0, ge=0)
    min_up_hours: int = Field(default=1, ge=1)
    min_down_hours: int = Field(default=1, ge=1)
    ramp_up_mw_per_h: float | None = Field(default=None, gt=0, description="None = unlimited.")
    ramp_down_mw_per_h: float | None = Field(default=None, gt=0, description="None = unlimited.")
    initial_on: bool = False
    initial_hours_in_state: int = Field(default=24, ge=0, description="Hours the unit has been on/off.")
    initial_output_mw: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> ThermalUnit:
        if self.min_output_mw > self.max_output_mw:
            raise ValueError(
                f"min_output_mw ({self.min_output_mw}) exceeds max_output_mw ({self.max_output_mw}) "
                f"for {self.unit_id}"
            )
        if self.initial_on and not self.min_output_mw <= self.initial_output_mw <= self.max_output_mw:
            raise ValueError(
                f"initial_output_mw ({self.initial_output_mw}) of {self.unit_id} must lie within "
                f"[min_output_mw, max_output_mw] while initial_on"
            )
        if not self.initial_on and self.initial_output_mw != 0:
            raise ValueError(f"initial_output_mw of {self.unit_id} must be 0 when initial_on is false")
        return self

    @property
    def must_stay_hours(self) -> int:
        """Hours at the start the initial state is locked by the min up/down time still running."""
        need = self.min_up_hours if self.initial_on else self.min_down_hours
        return max(0, need - self.initial_hours_in_state)

    @property
    def startup_ramp_mw(self) -> float:
        return max(self.min_output_mw, self.ramp_up_mw_per_h or self.max_output_mw)

    @property
    def shutdown_ramp_mw(self) -> float:
        return max(self.min_output_mw, self.ramp_down_mw_per_h or self.max_output_mw)


@dataclass
class UnitVars:
    on: list[pywraplp.Variable]
    start: list[pywraplp.Variable]
    stop: list[pywraplp.Variable]
    output: list[pywraplp.Variable]


def add_thermal_unit(solver: pywraplp.Solver, unit: ThermalUnit, hours: int, tag: str) -> UnitVars:
    """Add one unit's variables and constraints for `hours` hourly periods; returns the variables."""
    s = solver
    on = [s.BoolVar(f"{tag}_u{t}") for t in range(hours)]
    # Start/stop indicators are integral once `on` is, so they stay continuous (smaller branch-and-bound).
    start = [s.NumVar(0, 1, f"{tag}_v{t}") for t in range(hours)]
    stop = [s.NumVar(0, 1, f"{tag}_w{t}") for t in range(hours)]
    out = [s.NumVar(0, unit.max_output_mw, f"{tag}_p{t}") for t in range(hours)]
    prev_on: float | pywraplp.Variable = 1.0 if unit.initial_on else 0.0
    prev_out: float | pywraplp.Variable = unit.initial_output_mw
    for t in range(hours):
        s.Add(out[t] >= unit.min_output_mw * on[t])
        s.Add(out[t] <= unit.max_output_mw * on[t])
        s.Add(on[t] - prev_on == start[t] - stop[t])
        # Without these, start = stop = 1 while staying on would be feasible and fake extra ramp room.
        s.Add(start[t] <= 1 - prev_on)
        s.Add(stop[t] <= prev_on)
        if t < unit.must_stay_hours:
            on[t].SetBounds(1.0 if unit.initial_on else 0.0, 1.0 if unit.initial_on else 0.0)
        if unit.min_up_hours > 1:
            s.Add(sum(start[max(0, t - unit.min_up_hours + 1) : t + 1]) <= on[t])
        if unit.min_down_hours > 1:
            s.Add(sum(stop[max(0, t - unit.min_down_hours + 1) : t + 1]) <= 1 - on[t])
        if unit.ramp_up_mw_per_h is not None:
            s.Add(out[t] - prev_out <= unit.ramp_up_mw_per_h * prev_on + unit.startup_ramp_mw * start[t])
        if unit.ramp_down_mw_per_h is not None:
            s.Add(prev_out - out[t] <= unit.ramp_down_mw_per_h * on[t] + unit.shutdown_ramp_mw * stop[t])
        prev_on, prev_out = on[t], out[t]
    return UnitVars(on=on, start=start, stop=stop, output=out)


def unit_schedule_violations(
    unit: ThermalUnit, on: list[bool], output: list[float], tol: float = 1e-5
) -> list[str]:
    """Every technical constraint an hourly on/output schedule of `unit` breaks (empty when feasible)."""
    out: list[str] = []
    u = unit.unit_id
    prev_on, prev_out = unit.initial_on, unit.initial_output_mw
    run = unit.initial_hours_in_state
    for t, (is_on, p) in enumerate(zip(on, output, strict=True)):
        if is_on and not unit.min_output_mw - tol <= p <= unit.max_output_mw + tol:
            out.append(f"{u} t={t}: output {p} outside [{unit.min_output_mw}, {unit.max_output_mw}]")
        if not is_on and abs(p) > tol:
            out.append(f"{u} t={t}: output {p} while off")
        if is_on != prev_on:
            need = unit.min_up_hours if prev_on else unit.min_down_hours
            if run < need:
                out.append(
                    f"{u} t={t}: switched {'off' if prev_on else 'on'} after {run} h < minimum {need} h"
                )
            run = 0
        run += 1
        started, stopped = is_on and not prev_on, prev_on and not is_on
        if unit.ramp_up_mw_per_h is not None:
            limit = unit.startup_ramp_mw if started else unit.ramp_up_mw_per_h
            if p - prev_out > limit + tol:
                out.append(f"{u} t={t}: ramp up {p - prev_out:.3f} MW exceeds {limit}")
        if unit.ramp_down_mw_per_h is not None:
            limit = unit.shutdown_ramp_mw if stopped else unit.ramp_down_mw_per_h
            if prev_out - p > limit + tol:
                out.append(f"{u} t={t}: ramp down {prev_out - p:.3f} MW exceeds {limit}")
        prev_on, prev_out = is_on, p
    return out
