"""Bid curves: exchange rules on every curve, known thermal/renewable curves, validation errors."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from ml.optimization import (
    MARKET_RULES,
    BidCurve,
    BidCurveInput,
    BidStep,
    PriceQuantile,
    RenewableGenerator,
    SolveOptions,
    StorageAsset,
    ThermalUnit,
    bid_curve_violations,
    build_bid_curves,
    market_rules_for,
)
from ml.optimization.bidding import curve_from_points

HOURS = 24
BASE = [40 + 25 * math.sin((h - 8) / 24 * 2 * math.pi) for h in range(HOURS)]
QUANTILES = [
    PriceQuantile(level=level, prices=[p + z * 12 for p in BASE])
    for level, z in ((0.1, -1.28), (0.25, -0.67), (0.5, 0.0), (0.75, 0.67), (0.9, 1.28))
]


def quantity_at(curve: BidCurve, price: float) -> float:
    eligible = [s.quantity_mw for s in curve.steps if s.price <= price]
    return eligible[-1] if eligible else 0.0


@pytest.mark.parametrize("zone", ["PJM", "CAISO", "ERCOT", "NYISO", "IEX_N", "FR", "NP"])
def test_every_curve_obeys_its_market_rules(zone: str) -> None:
    inp = BidCurveInput(
        zone=zone,
        price_quantiles=QUANTILES,
        renewables=[RenewableGenerator(asset_id="wind", forecast_mw=[30 + h for h in range(HOURS)])],
        thermal=[
            ThermalUnit(
                unit_id="ccgt",
                min_output_mw=40,
                max_output_mw=120.05,
                marginal_cost=38.123,
                no_load_cost=200,
                startup_cost=2000,
                min_up_hours=4,
                min_down_hours=3,
                ramp_up_mw_per_h=35,
                ramp_down_mw_per_h=35,
            )
        ],
        storage=[StorageAsset(asset_id="bess", power_mw=10, energy_mwh=20, round_trip_efficiency=0.87)],
    )
    result = build_bid_curves(inp)
    rules = market_rules_for(zone)
    assert result.market == rules.market
    assert len(result.curves) == 3 * HOURS
    for curve in result.curves:
        assert bid_curve_violations(curve, rules) == []
        assert [s.price for s in curve.steps] == sorted({s.price for s in curve.steps})
        assert all(b.quantity_mw > a.quantity_mw for a, b in zip(curve.steps, curve.steps[1:], strict=False))
    storage = [c for c in result.curves if c.asset_id == "bess"]
    # Price-responsive storage: somewhere it buys at low prices and sells at high ones.
    assert any(c.steps[0].quantity_mw < 0 < c.steps[-1].quantity_mw for c in storage)


def test_unconstrained_thermal_unit_offers_full_output_at_or_above_marginal_cost() -> None:
    # No start-up/no-load cost, no min up/down or ramps: the self-schedule in each scenario is Pmax when the
    # price beats the marginal cost and 0 otherwise, so each hourly curve is known in closed form.
    unit = ThermalUnit(unit_id="gt", min_output_mw=0, max_output_mw=50, marginal_cost=40)
    # Gap 0: with the default 0.1 % gap, hours whose margin is tiny may legitimately be left idle.
    result = build_bid_curves(
        BidCurveInput(zone="EPEX", price_quantiles=QUANTILES, thermal=[unit]), SolveOptions(relative_gap=0.0)
    )
    for curve in result.curves:
        paths = sorted(q.prices[curve.hour] for q in QUANTILES)
        above = [p for p in paths if p >= 40]
        if not above:
            assert [(s.price, s.quantity_mw) for s in curve.steps] == [(-500.0, 0.0)]
        elif len(above) == len(paths):
            assert [(s.price, s.quantity_mw) for s in curve.steps] == [(-500.0, 50.0)]
        else:
            assert [(s.price, s.quantity_mw) for s in curve.steps] == [
                (-500.0, 0.0),
                (round(above[0], 1), 50.0),
            ]


def test_renewable_offers_forecast_from_its_marginal_cost() -> None:
    g = RenewableGenerator(asset_id="pv", forecast_mw=[12.34] * HOURS, marginal_cost=-20)
    result = build_bid_curves(BidCurveInput(zone="PJM", price_quantiles=QUANTILES, renewables=[g]))
    for curve in result.curves:
        assert quantity_at(curve, 1000) == pytest.approx(12.3)  # rounded down to the 0.1 MW tick


def test_curve_reduction_keeps_max_steps_and_monotonicity() -> None:
    rules = MARKET_RULES["PJM"]
    points = [
        (float(p), float(q))
        for p, q in zip(range(0, 300, 10), [3, 1, 5, 2, 8, 9, 4, 12, 15, 11] * 3, strict=True)
    ]
    steps = curve_from_points(points, rules)
    curve = BidCurve(asset_id="x", asset_type="thermal", hour=0, delivery_start=None, steps=steps)
    assert len(steps) <= rules.max_steps
    assert bid_curve_violations(curve, rules) == []
    assert steps[0].price == rules.price_floor


def test_validator_catches_each_kind_of_violation() -> None:
    rules = MARKET_RULES["CAISO"]
    bad = BidCurve(
        asset_id="x",
        asset_type="thermal",
        hour=3,
        delivery_start=None,
        steps=[
            BidStep(price=-200, quantity_mw=5),
            BidStep(price=10.005, quantity_mw=4),
            BidStep(price=10.005, quantity_mw=4.001),
        ],
    )
    problems = "\n".join(bid_curve_violations(bad, rules))
    for needle in (
        "outside [-150",
        "not on tick 0.01",
        "quantity decreases",
        "not strictly increasing",
        "quantity 4.001 not on tick",
    ):
        assert needle in problems
    many = BidCurve(
        asset_id="x",
        asset_type="thermal",
        hour=0,
        delivery_start=None,
        steps=[BidStep(price=float(i), quantity_mw=float(i)) for i in range(11)],
    )
    assert any("11 steps > max 10" in p for p in bid_curve_violations(many, rules))


def test_input_validation_errors() -> None:
    with pytest.raises(ValidationError, match="zone: no market rules for 'MARS'"):
        BidCurveInput(
            zone="MARS",
            price_quantiles=QUANTILES,
            renewables=[RenewableGenerator(asset_id="w", forecast_mw=[1.0] * HOURS)],
        )
    with pytest.raises(ValidationError, match="horizon mismatch with forecast"):
        BidCurveInput(
            zone="PJM",
            price_quantiles=QUANTILES,
            renewables=[RenewableGenerator(asset_id="w", forecast_mw=[1.0] * 23)],
        )
    with pytest.raises(ValidationError, match="no assets"):
        BidCurveInput(zone="PJM", price_quantiles=QUANTILES)
    with pytest.raises(ValidationError, match="min_output_mw"):
        ThermalUnit(unit_id="t", min_output_mw=100, max_output_mw=50, marginal_cost=10)
    with pytest.raises(ValidationError, match="forecast_mw of w is negative"):
        RenewableGenerator(asset_id="w", forecast_mw=[1.0, -2.0])
