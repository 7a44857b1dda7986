"""Day-ahead bid curves: monotone price–quantity curves per hour from a probabilistic price forecast.

Belongs here: the bid-curve input/output models, the curve builder for renewable, thermal and storage assets,
the exchange-rule conformance (rounding, clipping, step reduction) and the curve validator.

Method. Thermal units (scenario self-scheduling, as in Fleten & Kristoffersen): each forecast quantile path
is a price scenario; the unit's profit-maximising self-schedule is solved per scenario with its technical
constraints (min up/down, ramps, start-up and no-load cost; one MILP with a block per scenario). For each hour
the points (scenario price, scenario output) form the curve: at a clearing price between two scenario prices
the unit delivers what it planned in the lower one. Renewables offer their forecast at prices at or above
their marginal cost. Storage is dispatched against the probability-weighted quantile prices and bids around
the value of stored energy (the SoC-balance dual λ_h): buy below λ·η_c, sell above λ/η_d + degradation
(see `_storage_points`). Points are
sorted by price and made monotone (running maximum), rounded to the exchange's ticks (quantities toward zero,
so nothing is over-offered), clipped to floor/cap, reduced to the allowed number of steps by dropping the
smallest quantity increments, and validated before they are returned.

Curve convention: `steps` is a list of (price, quantity_mw) with strictly increasing prices and
non-decreasing quantities; the asset delivers `quantity_mw` of the highest step whose price ≤ the clearing
price (the first step is at the price floor). Negative quantities are purchases (storage charging).
"""

from __future__ import annotations

import itertools
import math
import time
from datetime import datetime, timedelta

from pydantic import Field, model_validator

from ml.optimization.common import SolveOptions, SolveStatus, StrictModel, new_solver, run_solver
from ml.optimization.markets import MarketRules, market_rules_for, on_tick
from ml.optimization.storage import (
    PriceQuantile,
    StorageAsset,
    StorageDispatchInput,
    StorageSchedule,
    quantile_scenario_weights,
    solve_storage_dispatch,
)
from ml.optimization.thermal import ThermalUnit, add_thermal_unit


class RenewableGenerator(StrictModel):
    asset_id: str = Field(min_length=1)
    forecast_mw: list[float] = Field(min_length=1, description="Expected output per hour.")
    marginal_cost: float = Field(default=0.0, description="Negative when a production subsidy is lost.")

    @model_validator(mode="after")
    def _non_negative(self) -> RenewableGenerator:
        bad = [t for t, q in enumerate(self.forecast_mw) if q < 0]
        if bad:
            raise ValueError(f"forecast_mw of {self.asset_id} is negative at hours {bad[:5]}")
        return self


class BidCurveInput(StrictModel):
    zone: str = Field(description="Zone code or market name, see ml.optimization.markets.")
    delivery_start: datetime | None = Field(default=None, description="Start of the first hour (UTC).")
    price_quantiles: list[PriceQuantile] = Field(min_length=1, description="Hourly quantile paths.")
    renewables: list[RenewableGenerator] = Field(default_factory=list)
    thermal: list[ThermalUnit] = Field(default_factory=list)
    storage: list[StorageAsset] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> BidCurveInput:
        try:
            market_rules_for(self.zone)
        except KeyError as exc:
            raise ValueError(f"zone: {exc.args[0]}") from None
        hours = len(self.price_quantiles[0].prices)
        levels = [q.level for q in self.price_quantiles]
        if len(set(levels)) != len(levels):
            raise ValueError(f"price_quantiles levels must be unique, got {levels}")
        for q in self.price_quantiles:
            if len(q.prices) != hours:
                raise ValueError(
                    f"price_quantiles level {q.level} has {len(q.prices)} hours, "
                    f"level {levels[0]} has {hours} "
                    "(horizon mismatch)"
                )
        for g in self.renewables:
            if len(g.forecast_mw) != hours:
                raise ValueError(
                    f"renewables {g.asset_id}: forecast_mw has {len(g.forecast_mw)} hours, "
                    "the price forecast "
                    f"has {hours} (horizon mismatch with forecast)"
                )
        ids = (
            [g.asset_id for g in self.renewables]
            + [u.unit_id for u in self.thermal]
            + [s.asset_id for s in self.storage]
        )
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"asset ids must be unique across renewables/thermal/storage, repeated: {dupes}")
        if not ids:
            raise ValueError("no assets: give at least one of renewables, thermal, storage")
        return self

    @property
    def hours(self) -> int:
        return len(self.price_quantiles[0].prices)

    def sorted_quantiles(self) -> list[PriceQuantile]:
        return sorted(self.price_quantiles, key=lambda q: q.level)


class BidStep(StrictModel):
    price: float
    quantity_mw: float


class BidCurve(StrictModel):
    asset_id: str
    asset_type: str
    hour: int
    delivery_start: datetime | None
    steps: list[BidStep]


class BidCurveResult(StrictModel):
    zone: str
    market: str
    currency: str
    curves: list[BidCurve]
    solve_time_s: float
    notes: list[str] = Field(default_factory=list, description="Assets whose scenario solves hit a limit.")


def bid_curve_violations(curve: BidCurve, rules: MarketRules) -> list[str]:
    """Every exchange rule the curve breaks: monotone, within floor/cap, on ticks, at most max_steps."""
    out: list[str] = []
    tag = f"{curve.asset_id} hour {curve.hour}"
    steps = curve.steps
    if not steps:
        return [f"{tag}: empty curve"]
    if len(steps) > rules.max_steps:
        out.append(f"{tag}: {len(steps)} steps > max {rules.max_steps}")
    for i, st in enumerate(steps):
        if not rules.price_floor <= st.price <= rules.price_cap:
            out.append(f"{tag}: price {st.price} outside [{rules.price_floor}, {rules.price_cap}]")
        if not on_tick(st.price, rules.price_tick):
            out.append(f"{tag}: price {st.price} not on tick {rules.price_tick}")
        if not on_tick(st.quantity_mw, rules.quantity_tick_mw):
            out.append(f"{tag}: quantity {st.quantity_mw} not on tick {rules.quantity_tick_mw}")
        if i and st.price <= steps[i - 1].price:
            out.append(f"{tag}: prices not strictly increasing at step {i}")
        if i and st.quantity_mw < steps[i - 1].quantity_mw:
            out.append(f"{tag}: quantity decreases at step {i} (not monotone)")
    return out


def curve_from_points(points: list[tuple[float, float]], rules: MarketRules) -> list[BidStep]:
    """Exchange-conforming monotone steps from (scenario price, scenario quantity) points."""
    pts = sorted(points)
    floor_q = pts[0][1]
    raw = [(rules.price_floor, floor_q), *pts]
    steps: list[tuple[float, float]] = []
    running = -math.inf
    for price, qty in raw:
        running = max(running, qty)
        p = _round_to(min(max(price, rules.price_floor), rules.price_cap), rules.price_tick)
        q = _toward_zero(running, rules.quantity_tick_mw)
        if steps and abs(p - steps[-1][0]) < rules.price_tick / 2:
            steps[-1] = (steps[-1][0], max(steps[-1][1], q))
        elif not steps or q > steps[-1][1]:
            steps.append((p, q))
    # Steps must strictly raise the quantity; merging equal prices may have left a flat step.
    dedup = [steps[0]] + [s for prev, s in itertools.pairwise(steps) if s[1] > prev[1]]
    while len(dedup) > rules.max_steps:
        # Drop the step adding the least quantity: the curve stays monotone, offering a bit less there.
        i = min(range(1, len(dedup)), key=lambda k: dedup[k][1] - dedup[k - 1][1])
        del dedup[i]
    return [
        BidStep(price=_clean_tick(p, rules.price_tick), quantity_mw=_clean_tick(q, rules.quantity_tick_mw))
        for p, q in dedup
    ]


def _round_to(x: float, tick: float) -> float:
    return round(x / tick) * tick


def _toward_zero(x: float, tick: float) -> float:
    n = x / tick
    return (math.floor(n + 1e-9) if n >= 0 else math.ceil(n - 1e-9)) * tick


def _clean_tick(x: float, tick: float) -> float:
    # Express as an exact decimal of the tick's precision, so stored values show no float noise.
    decimals = max(0, -math.floor(math.log10(tick)) + 1)
    return round(round(x / tick) * tick, decimals)


def _thermal_scenario_outputs(
    unit: ThermalUnit, paths: list[list[float]], options: SolveOptions
) -> tuple[list[list[float]], SolveStatus, bool]:
    """Profit-maximising hourly output of the unit under each price path (independent scenario blocks)."""
    hours = len(paths[0])
    # Without a path where producing can pay, the unit stays off unless its initial state forces it on.
    if not unit.initial_on and all(p <= unit.marginal_cost for path in paths for p in path):
        return [[0.0] * hours for _ in paths], SolveStatus.OPTIMAL, False
    s = new_solver(options.mip_solver)
    blocks = []
    objective = 0
    for k, path in enumerate(paths):
        v = add_thermal_unit(s, unit, hours, f"k{k}")
        blocks.append(v)
        objective += sum(
            (path[t] - unit.marginal_cost) * v.output[t]
            - unit.no_load_cost * v.on[t]
            - unit.startup_cost * v.start[t]
            for t in range(hours)
        )
    s.Maximize(objective)
    status, _, hit = run_solver(
        s, time_limit_s=options.time_limit_s, relative_gap=options.relative_gap, is_mip=True
    )
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        raise RuntimeError(f"thermal unit {unit.unit_id}: self-schedule {status}")
    return [[max(0.0, x.solution_value()) for x in b.output] for b in blocks], status, hit


def _storage_bidding_input(asset: StorageAsset, quantiles: list[PriceQuantile]) -> StorageDispatchInput:
    weights = quantile_scenario_weights([q.level for q in quantiles])
    expected = [
        sum(w * q.prices[h] for w, q in zip(weights, quantiles, strict=True))
        for h in range(len(quantiles[0].prices))
    ]
    return StorageDispatchInput(asset=asset, price_forecast=expected)


def _storage_points(asset: StorageAsset, sched: StorageSchedule, h: int) -> list[tuple[float, float]]:
    """Buy below λ·η_c, hold the planned position in between, sell above λ/η_d + degradation.

    λ is the SoC-balance dual of the expected-price dispatch (the value of stored energy at hour h): at a
    clearing price below what stored energy is worth after losses the battery buys as much as the planned
    SoC path allows, above it sells; this makes the storage curve price-responsive even though quantile
    paths that shift all hours together would leave the arbitrage schedule unchanged.
    """
    iv = sched.intervals[h]
    prev_soc = sched.intervals[h - 1].soc_mwh if h else asset.initial_soc * asset.energy_mwh
    can_buy = min(asset.power_mw, (asset.max_soc * asset.energy_mwh - prev_soc) / asset.charge_efficiency)
    can_sell = min(asset.power_mw, (prev_soc - asset.min_soc * asset.energy_mwh) * asset.discharge_efficiency)
    planned = iv.net_mw
    if iv.energy_value is None:
        return [(iv.price, planned)]
    buy_below = iv.energy_value * asset.charge_efficiency
    sell_above = iv.energy_value / asset.discharge_efficiency + asset.degradation_cost_per_mwh
    # The first point lands on the price floor once clipped: below buy_below the battery buys.
    return [(-math.inf, -max(0.0, can_buy)), (buy_below, planned), (sell_above, max(planned, can_sell, 0.0))]


def build_bid_curves(inp: BidCurveInput, options: SolveOptions | None = None) -> BidCurveResult:
    """Validated hourly bid curves for every asset of `inp` under its market's rules."""
    options = options or SolveOptions()
    started = time.perf_counter()
    rules = market_rules_for(inp.zone)
    quantiles = inp.sorted_quantiles()
    paths = [q.prices for q in quantiles]
    hours = inp.hours
    starts = [inp.delivery_start + timedelta(hours=h) if inp.delivery_start else None for h in range(hours)]
    curves: list[BidCurve] = []
    notes: list[str] = []

    def emit(asset_id: str, kind: str, per_scenario: list[list[float]]) -> None:
        for h in range(hours):
            steps = curve_from_points([(paths[k][h], per_scenario[k][h]) for k in range(len(paths))], rules)
            curve = BidCurve(
                asset_id=asset_id, asset_type=kind, hour=h, delivery_start=starts[h], steps=steps
            )
            problems = bid_curve_violations(curve, rules)
            if problems:
                raise RuntimeError(f"built an invalid curve: {problems}")
            curves.append(curve)

    for g in inp.renewables:
        emit(
            g.asset_id,
            "renewable",
            [
                [g.forecast_mw[h] if path[h] >= g.marginal_cost else 0.0 for h in range(hours)]
                for path in paths
            ],
        )
    for unit in inp.thermal:
        outputs, status, hit = _thermal_scenario_outputs(unit, paths, options)
        if hit or status != SolveStatus.OPTIMAL:
            notes.append(f"thermal {unit.unit_id}: scenario self-schedule {status}, time limit hit={hit}")
        emit(unit.unit_id, "thermal", outputs)
    for asset in inp.storage:
        sched = solve_storage_dispatch(_storage_bidding_input(asset, quantiles), options)
        if sched.info.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
            raise RuntimeError(f"storage {asset.asset_id}: dispatch {sched.info.status}")
        if sched.info.hit_time_limit:
            notes.append(f"storage {asset.asset_id}: dispatch hit the time limit")
        for h in range(hours):
            steps = curve_from_points(_storage_points(asset, sched, h), rules)
            curve = BidCurve(
                asset_id=asset.asset_id, asset_type="storage", hour=h, delivery_start=starts[h], steps=steps
            )
            problems = bid_curve_violations(curve, rules)
            if problems:
                raise RuntimeError(f"built an invalid curve: {problems}")
            curves.append(curve)
    return BidCurveResult(
        zone=inp.zone,
        market=rules.market,
        currency=rules.currency,
        curves=curves,
        solve_time_s=time.perf_counter() - started,
        notes=notes,
    )
