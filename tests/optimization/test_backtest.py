"""Backtest on the shared real prices (skipped when ../shared is absent)."""

from __future__ import annotations

import pytest

from ml.optimization import StorageAsset
from ml.optimization.backtest import backtest_storage, backtest_summary, load_epf_prices, naive_night_schedule

ASSET = StorageAsset(
    asset_id="bess",
    power_mw=10,
    energy_mwh=20,
    round_trip_efficiency=0.85,
    initial_soc=0.5,
    degradation_cost_per_mwh=2.0,
)


@pytest.mark.parametrize("market", ["PJM", "NP", "FR"])
def test_every_file_reads_as_hourly_prices(epf_dir, market: str) -> None:
    prices = load_epf_prices(epf_dir / f"{market}.csv")
    assert len(prices) > 50_000 and prices.index.is_monotonic_increasing


def test_perfect_foresight_bounds_the_other_strategies(epf_dir) -> None:
    prices = load_epf_prices(epf_dir / "PJM.csv")
    daily = backtest_storage(prices, ASSET, start="2017-06-01", days=10)
    assert len(daily) == 10
    assert (daily["perfect_revenue"] >= daily["forecast_revenue"] - 1e-6).all()
    assert (daily["perfect_revenue"] >= daily["naive_revenue"] - 1e-6).all()
    summary = backtest_summary(daily)
    assert summary.loc[0, "share_of_perfect"] == pytest.approx(1.0)
    assert list(summary["strategy"]) == [
        "perfect foresight",
        "weekly-naive forecast",
        "naive night/evening rule",
    ]


def test_naive_rule_returns_to_the_initial_state_of_charge() -> None:
    net, dis = naive_night_schedule(ASSET)
    charged = -sum(q for q in net if q < 0) * ASSET.charge_efficiency
    discharged = sum(dis) / ASSET.discharge_efficiency
    assert charged == pytest.approx(discharged) and charged > 0
