"""Battery storage arbitrage: charge/discharge per interval maximising revenue against a price forecast.

Belongs here: the storage input/output models, the dispatch solver (expected-revenue and risk-aware CVaR
variants), the constraint checker used on every result, and the per-interval explanation text.

Formulation (interval t of Δ hours, charge c_t, discharge d_t in MW, SoC s_t in MWh at the end of t):
    s_t = s_{t-1} + η_c·Δ·c_t − Δ·d_t/η_d,   η_c = η_d = √(round-trip efficiency)
    E·soc_min ≤ s_t ≤ E·soc_max,   s_T ≥ E·terminal_soc_min,
    Σ_{t∈day} Δ·d_t/η_d ≤ cycles·E·(soc_max − soc_min)
    revenue_k = Σ_t price_{k,t}·Δ·(d_t − c_t) − degradation·Σ_t Δ·d_t        (degradation per MWh discharged)
    maximise Σ_k w_k·revenue_k − λ·CVaR_α(−revenue)                           (one scenario, λ = 0 by default)
No simultaneous charge and discharge is enforced with a binary per interval, but only where needed: the LP is
solved first and binaries are added for the intervals where the LP charges and discharges at once (that only
pays when prices are negative, where burning energy through the losses earns money); repeat until none do.
The LP solution is optimal for the MILP whenever it needs no binary, since the LP is a relaxation.
"""

from __future__ import annotations

import itertools
import math
import time
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ml.optimization.common import (
    FEASIBILITY_TOL,
    SolveInfo,
    SolveOptions,
    SolveStatus,
    StrictModel,
    mip_gap,
    new_solver,
    run_solver,
)

MAX_HORIZON_HOURS = 168.0
# An interval counts as "charging and discharging at once" above this many MW on both sides.
_SIMULTANEOUS_MW = 1e-6


class StorageAsset(StrictModel):
    """One battery. SoC values are fractions of `energy_mwh`."""

    asset_id: str = Field(min_length=1)
    power_mw: float = Field(gt=0, description="Charge and discharge power limit (MW).")
    energy_mwh: float = Field(gt=0, description="Energy capacity (MWh).")
    round_trip_efficiency: float = Field(default=0.9, gt=0, le=1)
    min_soc: float = Field(default=0.0, ge=0, le=1)
    max_soc: float = Field(default=1.0, ge=0, le=1)
    initial_soc: float = Field(default=0.5, ge=0, le=1)
    terminal_soc_min: float | None = Field(
        default=None, ge=0, le=1, description="SoC the horizon must end at or above; None = initial_soc."
    )
    degradation_cost_per_mwh: float = Field(default=0.0, ge=0, description="Cost per MWh discharged.")
    max_cycles_per_day: float | None = Field(
        default=None, gt=0, description="Full equivalent cycles per day."
    )

    @model_validator(mode="after")
    def _soc_bounds_consistent(self) -> StorageAsset:
        if self.min_soc >= self.max_soc:
            raise ValueError(
                f"min_soc ({self.min_soc}) must be below max_soc ({self.max_soc}) (SoC bounds inverted)"
            )
        if not self.min_soc <= self.initial_soc <= self.max_soc:
            raise ValueError(
                f"initial_soc ({self.initial_soc}) must lie within [min_soc, max_soc] = "
                f"[{self.min_soc}, {self.max_soc}]"
            )
        if self.terminal_soc_min is not None and not self.min_soc <= self.terminal_soc_min <= self.max_soc:
            raise ValueError(
                f"terminal_soc_min ({self.terminal_soc_min}) must lie within [min_soc, max_soc] = "
                f"[{self.min_soc}, {self.max_soc}]"
            )
        return self

    @property
    def charge_efficiency(self) -> float:
        return math.sqrt(self.round_trip_efficiency)

    @property
    def discharge_efficiency(self) -> float:
        return math.sqrt(self.round_trip_efficiency)

    @property
    def terminal_soc(self) -> float:
        return self.initial_soc if self.terminal_soc_min is None else self.terminal_soc_min


class PriceQuantile(StrictModel):
    """One quantile path of the probabilistic price forecast."""

    level: float = Field(gt=0, lt=1)
    prices: list[float] = Field(min_length=1)


class RiskSettings(StrictModel):
    """CVaR penalty: maximise E[revenue] − weight·CVaR_alpha(loss) over the quantile scenarios."""

    alpha: float = Field(default=0.95, gt=0, lt=1, description="CVaR confidence level.")
    weight: float = Field(default=1.0, ge=0, description="λ, the price of one unit of CVaR.")


class StorageDispatchInput(StrictModel):
    asset: StorageAsset
    price_forecast: list[float] = Field(
        min_length=1, description="Expected price per interval (currency/MWh)."
    )
    interval_minutes: Literal[5, 15, 30, 60] = 60
    start: datetime | None = Field(default=None, description="Start of the first interval (UTC).")
    horizon_hours: float | None = Field(
        default=None,
        gt=0,
        le=MAX_HORIZON_HOURS,
        description="If given, the forecast must cover exactly this.",
    )
    price_quantiles: list[PriceQuantile] | None = Field(
        default=None, description="Quantile paths; required by `risk`, each as long as price_forecast."
    )
    risk: RiskSettings | None = None

    @field_validator("price_quantiles")
    @classmethod
    def _levels_unique(cls, value: list[PriceQuantile] | None) -> list[PriceQuantile] | None:
        if value is not None:
            levels = [q.level for q in value]
            if len(set(levels)) != len(levels):
                raise ValueError(f"quantile levels must be unique, got {levels}")
            value = sorted(value, key=lambda q: q.level)
        return value

    @model_validator(mode="after")
    def _horizon_consistent(self) -> StorageDispatchInput:
        n = len(self.price_forecast)
        hours = n * self.interval_minutes / 60
        if self.horizon_hours is not None and abs(hours - self.horizon_hours) > 1e-9:
            raise ValueError(
                f"price_forecast has {n} intervals of {self.interval_minutes} min = {hours:g} h, "
                f"but horizon_hours is {self.horizon_hours:g} (horizon mismatch with forecast)"
            )
        if hours > MAX_HORIZON_HOURS:
            raise ValueError(
                f"price_forecast covers {hours:g} h; the longest horizon is {MAX_HORIZON_HOURS:g} h"
            )
        for q in self.price_quantiles or []:
            if len(q.prices) != n:
                raise ValueError(
                    f"price_quantiles level {q.level} has {len(q.prices)} values, price_forecast has {n} "
                    "(horizon mismatch with forecast)"
                )
        if self.risk is not None and not self.price_quantiles:
            raise ValueError("risk needs price_quantiles (at least one quantile path)")
        a = self.asset
        dt = self.interval_minutes / 60
        needed = (a.terminal_soc - a.initial_soc) * a.energy_mwh
        if needed > a.power_mw * a.charge_efficiency * dt * n + FEASIBILITY_TOL:
            raise ValueError(
                f"asset.terminal_soc_min ({a.terminal_soc}) cannot be reached from "
                f"initial_soc ({a.initial_soc}) "
                f"within {hours:g} h at {a.power_mw} MW (infeasible)"
            )
        return self

    @property
    def dt_hours(self) -> float:
        return self.interval_minutes / 60

    def interval_starts(self) -> list[datetime | None]:
        if self.start is None:
            return [None] * len(self.price_forecast)
        step = timedelta(minutes=self.interval_minutes)
        return [self.start + i * step for i in range(len(self.price_forecast))]


class StorageInterval(StrictModel):
    index: int
    start: datetime | None
    price: float
    charge_mw: float
    discharge_mw: float
    net_mw: float = Field(description="discharge − charge: positive sells to the grid.")
    soc_mwh: float = Field(description="State of charge at the end of the interval.")
    revenue: float = Field(description="price·Δ·net − degradation, at the expected price.")
    energy_value: float | None = Field(
        default=None, description="Dual of the SoC balance: value of one more MWh stored at the end of t."
    )
    binding: list[str] = Field(default_factory=list)
    rationale: str = ""


class StorageSchedule(StrictModel):
    asset_id: str
    info: SolveInfo
    intervals: list[StorageInterval]
    expected_revenue: float | None = Field(
        default=None, description="Σ w_k revenue_k (= revenue at forecast)."
    )
    cvar_loss: float | None = Field(
        default=None, description="CVaR_alpha of −revenue over scenarios (risk only)."
    )
    scenario_revenues: dict[str, float] = Field(default_factory=dict)


def quantile_scenario_weights(levels: list[float]) -> list[float]:
    """Probability of each quantile path: the mass between midpoints of neighbouring levels (sums to 1)."""
    cuts = [0.0] + [(a + b) / 2 for a, b in itertools.pairwise(levels)] + [1.0]
    return [hi - lo for lo, hi in itertools.pairwise(cuts)]


def _scenarios(inp: StorageDispatchInput) -> tuple[list[str], list[list[float]], list[float]]:
    if inp.risk is None or not inp.price_quantiles:
        return ["expected"], [inp.price_forecast], [1.0]
    levels = [q.level for q in inp.price_quantiles]
    return (
        [f"q{lv:g}" for lv in levels],
        [q.prices for q in inp.price_quantiles],
        quantile_scenario_weights(levels),
    )


class _Model:
    """One pywraplp model of the dispatch; `binary_at` lists intervals that get a charge/discharge binary."""

    def __init__(
        self, inp: StorageDispatchInput, solver_name: str, binary_at: set[int], fixed: dict[int, int]
    ):
        a = inp.asset
        n, dt = len(inp.price_forecast), inp.dt_hours
        eta_c, eta_d = a.charge_efficiency, a.discharge_efficiency
        s = self.solver = new_solver(solver_name)
        s.SuppressOutput()
        inf = s.infinity()
        self.charge = [s.NumVar(0, a.power_mw, f"c{t}") for t in range(n)]
        self.discharge = [s.NumVar(0, a.power_mw, f"d{t}") for t in range(n)]
        self.soc = [s.NumVar(a.min_soc * a.energy_mwh, a.max_soc * a.energy_mwh, f"s{t}") for t in range(n)]
        self.binary = {}
        for t in sorted(binary_at):
            u = s.BoolVar(f"u{t}")
            self.binary[t] = u
            s.Add(self.charge[t] <= a.power_mw * u)
            s.Add(self.discharge[t] <= a.power_mw * (1 - u))
        for t, value in fixed.items():
            # With the binaries fixed the model is an LP whose duals explain the MILP solution.
            if value:
                self.discharge[t].SetUb(0.0)
            else:
                self.charge[t].SetUb(0.0)
        prev = a.initial_soc * a.energy_mwh
        self.balance = []
        for t in range(n):
            self.balance.append(
                s.Add(self.soc[t] - eta_c * dt * self.charge[t] + (dt / eta_d) * self.discharge[t] == prev)
            )
            prev = self.soc[t]
        self.terminal = s.Add(self.soc[-1] >= a.terminal_soc * a.energy_mwh)
        self.cycles = []
        if a.max_cycles_per_day is not None:
            per_day = round(24 / dt)
            limit = a.max_cycles_per_day * a.energy_mwh * (a.max_soc - a.min_soc)
            for lo in range(0, n, per_day):
                hi = min(n, lo + per_day)
                self.cycles.append(
                    s.Add(sum((dt / eta_d) * self.discharge[t] for t in range(lo, hi)) <= limit)
                )
        names, paths, weights = _scenarios(inp)
        deg = a.degradation_cost_per_mwh
        self.revenue = [
            sum(
                p[t] * dt * (self.discharge[t] - self.charge[t]) - deg * dt * self.discharge[t]
                for t in range(n)
            )
            for p in paths
        ]
        objective = sum(w * r for w, r in zip(weights, self.revenue, strict=True))
        self.var_level = None
        if inp.risk is not None and inp.risk.weight > 0:
            # Rockafellar–Uryasev: CVaR = ζ + Σ w_k z_k / (1 − α), z_k ≥ −revenue_k − ζ, z_k ≥ 0.
            self.var_level = s.NumVar(-inf, inf, "zeta")
            excess = [s.NumVar(0, inf, f"z{k}") for k in range(len(paths))]
            for z, r in zip(excess, self.revenue, strict=True):
                s.Add(z >= -r - self.var_level)
            self.cvar = self.var_level + sum(w * z for w, z in zip(weights, excess, strict=True)) / (
                1 - inp.risk.alpha
            )
            objective = objective - inp.risk.weight * self.cvar
        s.Maximize(objective)
        self.scenario_names, self.weights = names, weights


def solve_storage_dispatch(inp: StorageDispatchInput, options: SolveOptions | None = None) -> StorageSchedule:
    """Revenue-maximising charge/discharge schedule for one battery (risk-aware when `inp.risk` is set)."""
    options = options or SolveOptions()
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    n = len(inp.price_forecast)
    binary_at: set[int] = set()
    passes = 0
    while True:
        passes += 1
        is_mip = bool(binary_at)
        model = _Model(inp, options.mip_solver if is_mip else options.lp_solver, binary_at, {})
        remaining = max(0.001, deadline - time.perf_counter())
        status, _, hit_limit = run_solver(
            model.solver, time_limit_s=remaining, relative_gap=options.relative_gap, is_mip=is_mip
        )
        if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
            info = SolveInfo(
                status=status,
                solve_time_s=time.perf_counter() - started,
                solver=model.solver.SolverVersion(),
                hit_time_limit=hit_limit,
                binaries=len(binary_at),
                passes=passes,
            )
            return StorageSchedule(asset_id=inp.asset.asset_id, info=info, intervals=[])
        both = {
            t
            for t in range(n)
            if model.charge[t].solution_value() > _SIMULTANEOUS_MW
            and model.discharge[t].solution_value() > _SIMULTANEOUS_MW
        }
        if not both or hit_limit or passes > n:
            break
        # Binarise every interval where burning energy through the losses can pay, not only where this LP
        # did it, so the MILP rarely needs another pass.
        binary_at |= both | _loss_burning_intervals(inp)
    objective = model.solver.Objective().Value()
    bound = model.solver.Objective().BestBound() if binary_at else objective
    charge = [v.solution_value() for v in model.charge]
    discharge = [v.solution_value() for v in model.discharge]
    duals = _duals(inp, model, options) if status == SolveStatus.OPTIMAL or not hit_limit else None
    info = SolveInfo(
        status=status,
        objective=objective,
        best_bound=bound,
        relative_gap=mip_gap(objective, bound),
        solve_time_s=time.perf_counter() - started,
        solver=model.solver.SolverVersion(),
        hit_time_limit=hit_limit,
        binaries=len(binary_at),
        passes=passes,
    )
    return _schedule(inp, info, charge, discharge, model, duals)


def _loss_burning_intervals(inp: StorageDispatchInput) -> set[int]:
    """Intervals where charging c and discharging η·c at once (SoC unchanged) earns money in some scenario."""
    a = inp.asset
    eta = a.round_trip_efficiency
    if eta >= 1:
        return set()
    threshold = -a.degradation_cost_per_mwh * eta / (1 - eta)
    _, paths, _ = _scenarios(inp)
    return {t for t in range(len(inp.price_forecast)) if min(p[t] for p in paths) < threshold + 1e-9}


def _duals(inp: StorageDispatchInput, model: _Model, options: SolveOptions) -> list[float] | None:
    """SoC-balance duals; from the LP itself, or from the LP with the MILP's binaries fixed."""
    if not model.binary:
        return [c.dual_value() for c in model.balance]
    fixed = {t: round(u.solution_value()) for t, u in model.binary.items()}
    lp = _Model(inp, options.lp_solver, set(), fixed)
    status, _, _ = run_solver(lp.solver, time_limit_s=options.time_limit_s, relative_gap=0.0, is_mip=False)
    if status != SolveStatus.OPTIMAL:
        return None
    return [c.dual_value() for c in lp.balance]


def _schedule(
    inp: StorageDispatchInput,
    info: SolveInfo,
    charge: list[float],
    discharge: list[float],
    model: _Model,
    duals: list[float] | None,
) -> StorageSchedule:
    a, dt = inp.asset, inp.dt_hours
    eta_c, eta_d = a.charge_efficiency, a.discharge_efficiency
    lo, hi = a.min_soc * a.energy_mwh, a.max_soc * a.energy_mwh
    soc, prev = [], a.initial_soc * a.energy_mwh
    for c, d in zip(charge, discharge, strict=True):
        prev = prev + eta_c * dt * c - dt * d / eta_d
        soc.append(prev)
    intervals = []
    starts = inp.interval_starts()
    for t, price in enumerate(inp.price_forecast):
        c, d = _clean(charge[t]), _clean(discharge[t])
        binding = []
        if abs(soc[t] - hi) <= 1e-6:
            binding.append("soc_max")
        if abs(soc[t] - lo) <= 1e-6:
            binding.append("soc_min")
        if abs(c - a.power_mw) <= 1e-6:
            binding.append("charge_power")
        if abs(d - a.power_mw) <= 1e-6:
            binding.append("discharge_power")
        value = duals[t] if duals is not None else None
        intervals.append(
            StorageInterval(
                index=t,
                start=starts[t],
                price=price,
                charge_mw=c,
                discharge_mw=d,
                net_mw=d - c,
                soc_mwh=soc[t],
                revenue=price * dt * (d - c) - a.degradation_cost_per_mwh * dt * d,
                energy_value=value,
                binding=binding,
                rationale=_rationale(t, inp, c, d, value, binding),
            )
        )
    _, paths, _ = _scenarios(inp)
    scen = {
        name: schedule_revenue(inp, [d - c for c, d in zip(charge, discharge, strict=True)], discharge, path)
        for name, path in zip(model.scenario_names, paths, strict=True)
    }
    expected = sum(w * r for w, r in zip(model.weights, scen.values(), strict=True))
    cvar = None
    if inp.risk is not None:
        cvar = cvar_of_losses([-r for r in scen.values()], model.weights, inp.risk.alpha)
    return StorageSchedule(
        asset_id=a.asset_id,
        info=info,
        intervals=intervals,
        expected_revenue=expected,
        cvar_loss=cvar,
        scenario_revenues=scen,
    )


def _clean(x: float) -> float:
    return 0.0 if abs(x) < 1e-9 else x


def cvar_of_losses(losses: list[float], weights: list[float], alpha: float) -> float:
    """CVaR_alpha of a discrete loss distribution: the weighted mean of the worst (1 − alpha) tail."""
    order = sorted(zip(losses, weights, strict=True), key=lambda lw: -lw[0])
    tail, acc, total = 1 - alpha, 0.0, 0.0
    for loss, w in order:
        take = min(w, tail - acc)
        if take <= 0:
            break
        total += take * loss
        acc += take
    return total / tail


def _rationale(
    t: int, inp: StorageDispatchInput, c: float, d: float, value: float | None, binding: list[str]
) -> str:
    a = inp.asset
    p = inp.price_forecast[t]
    later = inp.price_forecast[t + 1 :]
    earlier = inp.price_forecast[:t]
    eta, deg = a.round_trip_efficiency, a.degradation_cost_per_mwh
    why_value = ""
    if value is not None:
        buy_below = value * a.charge_efficiency
        sell_above = value / a.discharge_efficiency + deg
        why_value = (
            f"; stored energy is worth {value:.2f}/MWh "
            f"(buy below {buy_below:.2f}, sell above {sell_above:.2f})"
        )
    limits = f" [binding: {', '.join(binding)}]" if binding else ""
    if c > 0 and d > 0:
        return f"charge {c:.3g} MW and discharge {d:.3g} MW: price {p:.2f} < 0, losses earn money{limits}"
    if c > 0:
        best = max(later) if later else p
        return (
            f"charged {c:.3g} MW because price {p:.2f} is below later prices net of losses "
            f"(best later {best:.2f} × {eta:.2f} − {deg:.2f} = {best * eta - deg:.2f}){why_value}{limits}"
        )
    if d > 0:
        cheapest = min(earlier) if earlier else None
        since = (
            f" (cheapest earlier price {cheapest:.2f})" if cheapest is not None else " (energy held at start)"
        )
        return (
            f"discharged {d:.3g} MW because price {p:.2f} beats the cost of the stored energy"
            f"{since}{why_value}{limits}"
        )
    return f"idle: price {p:.2f} gives no profitable trade after losses and degradation{why_value}{limits}"


def storage_schedule_violations(
    inp: StorageDispatchInput, schedule: StorageSchedule, tol: float = 1e-5
) -> list[str]:
    """Every constraint the schedule breaks (empty when feasible); recomputes the SoC from the powers."""
    a, dt = inp.asset, inp.dt_hours
    out: list[str] = []
    if len(schedule.intervals) != len(inp.price_forecast):
        return [f"schedule has {len(schedule.intervals)} intervals, forecast has {len(inp.price_forecast)}"]
    soc = a.initial_soc * a.energy_mwh
    lo, hi = a.min_soc * a.energy_mwh, a.max_soc * a.energy_mwh
    discharged_by_day: dict[int, float] = {}
    per_day = round(24 / dt)
    for iv in schedule.intervals:
        t = iv.index
        if not -tol <= iv.charge_mw <= a.power_mw + tol:
            out.append(f"t={t}: charge {iv.charge_mw} outside [0, {a.power_mw}]")
        if not -tol <= iv.discharge_mw <= a.power_mw + tol:
            out.append(f"t={t}: discharge {iv.discharge_mw} outside [0, {a.power_mw}]")
        if iv.charge_mw > tol and iv.discharge_mw > tol:
            out.append(f"t={t}: simultaneous charge {iv.charge_mw} and discharge {iv.discharge_mw}")
        soc += a.charge_efficiency * dt * iv.charge_mw - dt * iv.discharge_mw / a.discharge_efficiency
        if not lo - tol <= soc <= hi + tol:
            out.append(f"t={t}: SoC {soc:.6f} MWh outside [{lo}, {hi}]")
        if abs(soc - iv.soc_mwh) > tol:
            out.append(f"t={t}: reported SoC {iv.soc_mwh} differs from recomputed {soc}")
        day = t // per_day
        discharged_by_day[day] = (
            discharged_by_day.get(day, 0.0) + dt * iv.discharge_mw / a.discharge_efficiency
        )
    if soc < a.terminal_soc * a.energy_mwh - tol:
        out.append(f"final SoC {soc:.6f} MWh below terminal minimum {a.terminal_soc * a.energy_mwh}")
    if a.max_cycles_per_day is not None:
        limit = a.max_cycles_per_day * a.energy_mwh * (a.max_soc - a.min_soc)
        for day, used in discharged_by_day.items():
            if used > limit + tol:
                out.append(f"day {day}: {used:.4f} MWh discharged exceeds cycle limit {limit:.4f}")
    return out


def schedule_revenue(
    inp: StorageDispatchInput, net_mw: list[float], discharge_mw: list[float], prices: list[float]
) -> float:
    """Revenue of a fixed schedule at given (e.g. realised) prices, net of degradation."""
    dt, deg = inp.dt_hours, inp.asset.degradation_cost_per_mwh
    return sum(p * dt * q - deg * dt * d for p, q, d in zip(prices, net_mw, discharge_mw, strict=True))
