"""Battery dispatch: exact optima against brute force, constraints on every result, validation errors."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import ValidationError

from ml.optimization import (
    PriceQuantile,
    RiskSettings,
    SolveOptions,
    SolveStatus,
    StorageAsset,
    StorageDispatchInput,
    solve_storage_dispatch,
    storage_schedule_violations,
)
from ml.optimization.explain import storage_schedule_png
from ml.optimization.storage import cvar_of_losses, quantile_scenario_weights

# E = 0.9 MWh and η = 0.81 (0.9 each way): one hour at 1 MW fills the battery exactly and discharging never
# hits the power limit, so every vertex of the feasible set lies on the SoC grid {0, 0.45, 0.9}.
GRID_ASSET = StorageAsset(
    asset_id="grid",
    power_mw=1.0,
    energy_mwh=0.9,
    round_trip_efficiency=0.81,
    min_soc=0.0,
    max_soc=1.0,
    initial_soc=0.0,
    degradation_cost_per_mwh=2.0,
)


def brute_force_optimum(asset: StorageAsset, prices: list[float]) -> float:
    """Best revenue over every sequence of exclusive charge/idle/discharge actions on the SoC grid."""
    eta_c, eta_d = asset.charge_efficiency, asset.discharge_efficiency
    best = float("-inf")
    for deltas in itertools.product((-0.9, -0.45, 0.0, 0.45, 0.9), repeat=len(prices)):
        soc, revenue, ok = asset.initial_soc * asset.energy_mwh, 0.0, True
        for price, delta in zip(prices, deltas, strict=True):
            soc += delta
            if not -1e-9 <= soc <= asset.energy_mwh + 1e-9:
                ok = False
                break
            charge = delta / eta_c if delta > 0 else 0.0
            discharge = -delta * eta_d if delta < 0 else 0.0
            if charge > asset.power_mw + 1e-9 or discharge > asset.power_mw + 1e-9:
                ok = False
                break
            revenue += price * (discharge - charge) - asset.degradation_cost_per_mwh * discharge
        if ok and soc >= asset.terminal_soc * asset.energy_mwh - 1e-9:
            best = max(best, revenue)
    return best


@pytest.mark.parametrize(
    "prices",
    [
        [20.0, 35.0, 80.0, 10.0, 15.0, 95.0],
        [50.0, 40.0, 30.0, 20.0, 10.0, 5.0],  # falling prices: never worth a cycle
        [-60.0, -40.0, 70.0, -80.0, 10.0, 120.0],  # negative prices: LP would charge and discharge at once
    ],
)
def test_six_interval_battery_matches_brute_force(prices: list[float]) -> None:
    inp = StorageDispatchInput(asset=GRID_ASSET, price_forecast=prices)
    schedule = solve_storage_dispatch(inp)
    assert schedule.info.status == SolveStatus.OPTIMAL
    assert storage_schedule_violations(inp, schedule) == []
    assert schedule.info.objective == pytest.approx(brute_force_optimum(GRID_ASSET, prices), abs=1e-6)
    assert schedule.expected_revenue == pytest.approx(schedule.info.objective, abs=1e-6)


def test_hand_solved_two_interval_cycle() -> None:
    # Charge 1 MW at 10 (stores 0.9 MWh), sell 0.81 MWh at 100: 81 − 10 − 2·0.81 = 69.38.
    inp = StorageDispatchInput(asset=GRID_ASSET, price_forecast=[10.0, 100.0])
    schedule = solve_storage_dispatch(inp)
    assert schedule.info.objective == pytest.approx(69.38)
    first, second = schedule.intervals
    assert (first.charge_mw, second.discharge_mw) == (pytest.approx(1.0), pytest.approx(0.81))
    assert first.rationale.startswith("charged 1 MW because price 10.00 is below later prices")
    assert "discharged" in second.rationale
    assert "soc_max" in first.binding and "soc_min" in second.binding


def test_negative_prices_add_binaries_and_never_charge_and_discharge_together() -> None:
    asset = StorageAsset(asset_id="b", power_mw=2, energy_mwh=4, round_trip_efficiency=0.8, initial_soc=0.5)
    prices = [-100.0, -120.0, -90.0, 30.0, -150.0, 60.0, -80.0, 40.0]
    inp = StorageDispatchInput(asset=asset, price_forecast=prices)
    schedule = solve_storage_dispatch(inp)
    assert schedule.info.binaries > 0
    assert schedule.info.status == SolveStatus.OPTIMAL
    assert storage_schedule_violations(inp, schedule) == []
    assert all(iv.energy_value is not None for iv in schedule.intervals)


def test_random_week_at_15_minutes_respects_every_constraint_and_cycle_limit() -> None:
    rng = random.Random(7)
    prices = [40 + 30 * rng.random() - (60 if rng.random() < 0.05 else 0) for _ in range(672)]
    asset = StorageAsset(
        asset_id="b",
        power_mw=5,
        energy_mwh=10,
        round_trip_efficiency=0.88,
        initial_soc=0.3,
        min_soc=0.1,
        max_soc=0.95,
        max_cycles_per_day=1.0,
        degradation_cost_per_mwh=1.5,
    )
    inp = StorageDispatchInput(asset=asset, price_forecast=prices, interval_minutes=15, horizon_hours=168)
    schedule = solve_storage_dispatch(inp, SolveOptions(time_limit_s=2.0))
    assert schedule.info.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
    assert storage_schedule_violations(inp, schedule) == []
    assert schedule.info.relative_gap is not None and schedule.info.relative_gap <= 0.001 + 1e-12


def test_risk_aware_dispatch_trades_expected_revenue_for_lower_cvar() -> None:
    base = [30, 20, 15, 25, 60, 90, 70, 40]
    quantiles = [
        PriceQuantile(level=0.1, prices=[p - 30 if h >= 4 else p - 5 for h, p in enumerate(base)]),
        PriceQuantile(level=0.5, prices=base),
        PriceQuantile(level=0.9, prices=[p + 40 if h >= 4 else p + 5 for h, p in enumerate(base)]),
    ]
    asset = StorageAsset(asset_id="b", power_mw=1, energy_mwh=2, round_trip_efficiency=0.85, initial_soc=0.5)
    neutral = solve_storage_dispatch(
        StorageDispatchInput(
            asset=asset,
            price_forecast=base,
            price_quantiles=quantiles,
            risk=RiskSettings(alpha=0.8, weight=0.0),
        )
    )
    averse = solve_storage_dispatch(
        StorageDispatchInput(
            asset=asset,
            price_forecast=base,
            price_quantiles=quantiles,
            risk=RiskSettings(alpha=0.8, weight=5.0),
        )
    )
    assert quantile_scenario_weights([0.1, 0.5, 0.9]) == pytest.approx([0.3, 0.4, 0.3])
    assert set(neutral.scenario_revenues) == {"q0.1", "q0.5", "q0.9"}
    assert averse.expected_revenue <= neutral.expected_revenue + 1e-9
    assert averse.cvar_loss <= neutral.cvar_loss + 1e-9
    assert averse.cvar_loss < neutral.cvar_loss or averse.expected_revenue == pytest.approx(
        neutral.expected_revenue
    )
    # The objective of the risk model is E[revenue] − λ·CVaR, recomputed from the reported figures.
    assert averse.info.objective == pytest.approx(averse.expected_revenue - 5.0 * averse.cvar_loss, abs=1e-6)


def test_cvar_of_a_discrete_distribution() -> None:
    # Worst 20 % of {loss 10 w.p. 0.1, 0 w.p. 0.9}: half the tail at 10, half at 0.
    assert cvar_of_losses([10.0, 0.0], [0.1, 0.9], alpha=0.8) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"power_mw": -1}, "power_mw"),
        ({"min_soc": 0.9, "max_soc": 0.1, "initial_soc": 0.5}, "SoC bounds inverted"),
        ({"initial_soc": 0.95, "max_soc": 0.9}, "initial_soc"),
        ({"round_trip_efficiency": 1.2}, "round_trip_efficiency"),
    ],
)
def test_asset_validation_errors_name_the_field(change: dict, message: str) -> None:
    fields = {"asset_id": "b", "power_mw": 1, "energy_mwh": 2} | change
    with pytest.raises(ValidationError, match=message):
        StorageAsset(**fields)


def test_input_validation_errors() -> None:
    asset = StorageAsset(asset_id="b", power_mw=1, energy_mwh=2)
    with pytest.raises(ValidationError, match="horizon mismatch"):
        StorageDispatchInput(asset=asset, price_forecast=[1.0] * 23, horizon_hours=24)
    with pytest.raises(ValidationError, match=r"price_quantiles level 0\.5 has 3 values"):
        StorageDispatchInput(
            asset=asset,
            price_forecast=[1.0] * 4,
            price_quantiles=[PriceQuantile(level=0.5, prices=[1, 2, 3])],
        )
    with pytest.raises(ValidationError, match="longest horizon"):
        StorageDispatchInput(asset=asset, price_forecast=[1.0] * 169)
    with pytest.raises(ValidationError, match="risk needs price_quantiles"):
        StorageDispatchInput(asset=asset, price_forecast=[1.0], risk=RiskSettings())
    with pytest.raises(ValidationError, match="cannot be reached"):
        StorageDispatchInput(
            asset=asset.model_copy(update={"initial_soc": 0.0, "terminal_soc_min": 1.0}), price_forecast=[1.0]
        )
    with pytest.raises(ValidationError, match="price_forecast"):
        StorageDispatchInput(asset=asset, price_forecast=[1.0, float("nan")])


def test_schedule_plot_is_a_png() -> None:
    schedule = solve_storage_dispatch(StorageDispatchInput(asset=GRID_ASSET, price_forecast=[20, 35, 80, 10]))
    png = storage_schedule_png(schedule)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
