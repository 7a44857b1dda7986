"""Optimization benchmark: battery dispatch over a year of real prices, 500-generator bid curves, backtest.

    python -m benchmarks.optimization [--market PJM] [--year 2017]

Prints p50/p95/max solve times (targets: p95 < 50 ms per 24 h hourly instance, < 250 ms per 168 h
15-minute instance, 2 s hard limit, gap ≤ 0.1 %), instances that hit the limit, the bid-curve batch time
(target < 30 s) and the revenue table forecast vs perfect foresight vs naive rule.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ml.optimization import (
    BidCurveInput,
    PriceQuantile,
    RenewableGenerator,
    SolveOptions,
    StorageAsset,
    StorageDispatchInput,
    ThermalUnit,
    build_bid_curves,
    solve_storage_dispatch,
    storage_schedule_violations,
)
from ml.optimization.backtest import backtest_storage, backtest_summary, daily_matrix, load_epf_prices

EPF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epf"
ASSET = StorageAsset(
    asset_id="bess",
    power_mw=10,
    energy_mwh=20,
    round_trip_efficiency=0.85,
    initial_soc=0.5,
    degradation_cost_per_mwh=2.0,
    max_cycles_per_day=2.0,
)


def _stats(
    label: str, times: list[float], cpu: list[float], target_ms: float, infos: list, violations: int
) -> None:
    ms = np.array(times) * 1000
    cpu_ms = np.array(cpu) * 1000
    hit = sum(i.hit_time_limit for i in infos)
    gap = max((i.relative_gap or 0.0) for i in infos)
    mip = sum(i.binaries > 0 for i in infos)
    print(
        f"{label}: n={len(ms)} p50={np.percentile(ms, 50):.1f} ms p95={np.percentile(ms, 95):.1f} ms "
        f"max={ms.max():.1f} ms (target p95 < {target_ms:.0f} ms); "
        f"CPU p95={np.percentile(cpu_ms, 95):.1f} ms "
        f"| needed binaries={mip} "
        f"hit 2 s limit={hit} max gap={gap:.2e} constraint violations={violations}"
    )


def dispatch_benchmark(prices: pd.Series, year: int, options: SolveOptions) -> None:
    year_prices = prices[str(year)]
    wide = daily_matrix(year_prices)
    times, cpu, infos, bad = [], [], [], 0
    for _, row in wide.iterrows():
        inp = StorageDispatchInput(asset=ASSET, price_forecast=row.tolist())
        t0, c0 = time.perf_counter(), time.process_time()
        sched = solve_storage_dispatch(inp, options)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        infos.append(sched.info)
        bad += bool(storage_schedule_violations(inp, sched))
        if sched.info.hit_time_limit:
            print(f"  24h instance {row.name.date()} hit the time limit: {sched.info}")
    _stats(f"24 h hourly, {year}", times, cpu, 50, infos, bad)
    neg_days = int((wide.min(axis=1) < 0).sum())
    print(f"  days with a negative price: {neg_days}")
    quarter = year_prices.resample("15min").interpolate("linear")
    times, cpu, infos, bad = [], [], [], 0
    for week in range(52):
        chunk = quarter.iloc[week * 672 : (week + 1) * 672]
        if len(chunk) < 672:
            break
        inp = StorageDispatchInput(asset=ASSET, price_forecast=chunk.tolist(), interval_minutes=15)
        t0, c0 = time.perf_counter(), time.process_time()
        sched = solve_storage_dispatch(inp, options)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        infos.append(sched.info)
        bad += bool(storage_schedule_violations(inp, sched))
        if sched.info.hit_time_limit:
            print(f"  168h instance week {week} hit the time limit: {sched.info}")
    _stats(f"168 h 15-min, {year}", times, cpu, 250, infos, bad)


def bid_curve_benchmark(prices: pd.Series, year: int, options: SolveOptions) -> None:
    wide = daily_matrix(prices[str(year)])
    day = wide.iloc[len(wide) // 2]
    spread = wide.iloc[len(wide) // 2 - 28 : len(wide) // 2].std().to_numpy()
    quantiles = [
        PriceQuantile(level=lv, prices=[float(p + z * s) for p, s in zip(day, spread, strict=True)])
        for lv, z in ((0.05, -1.645), (0.25, -0.674), (0.5, 0.0), (0.75, 0.674), (0.95, 1.645))
    ]
    rng = random.Random(42)
    mean = float(day.mean())
    renewables = [
        RenewableGenerator(
            asset_id=f"ren{i}",
            forecast_mw=[
                max(
                    0.0,
                    rng.uniform(5, 80) * (math.sin((h - 6) / 12 * math.pi) if i % 2 else rng.uniform(0.2, 1)),
                )
                for h in range(24)
            ],
            marginal_cost=rng.choice([0.0, -10.0]),
        )
        for i in range(250)
    ]
    thermal = [
        ThermalUnit(
            unit_id=f"th{i}",
            min_output_mw=(pmin := rng.uniform(10, 80)),
            max_output_mw=pmin * rng.uniform(2, 5),
            marginal_cost=mean * rng.uniform(0.6, 1.4),
            no_load_cost=rng.uniform(0, 300),
            startup_cost=rng.uniform(0, 5000),
            min_up_hours=rng.randint(1, 8),
            min_down_hours=rng.randint(1, 8),
            ramp_up_mw_per_h=pmin * rng.uniform(0.5, 2),
            ramp_down_mw_per_h=pmin * rng.uniform(0.5, 2),
        )
        for i in range(200)
    ]
    storage = [
        StorageAsset(
            asset_id=f"st{i}",
            power_mw=rng.uniform(1, 50),
            energy_mwh=rng.uniform(2, 200),
            round_trip_efficiency=rng.uniform(0.75, 0.92),
        )
        for i in range(50)
    ]
    inp = BidCurveInput(
        zone="PJM", price_quantiles=quantiles, renewables=renewables, thermal=thermal, storage=storage
    )
    t0, c0 = time.perf_counter(), time.process_time()
    result = build_bid_curves(inp, options)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = sum(len(c.steps) for c in result.curves)
    print(
        f"bid curves: 500 generators (250 renewable, 200 thermal MILP, 50 storage) × 24 h = "
        f"{len(result.curves)} validated curves, {steps} steps in {elapsed:.1f} s wall, {cpu:.1f} s CPU "
        f"(target < 30 s); "
        f"assets that hit a limit: {len(result.notes)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--market", default="PJM", choices=["PJM", "NP", "FR"])
    parser.add_argument("--year", type=int, default=2017)
    args = parser.parse_args()
    path = EPF_DIR / f"{args.market}.csv"
    if not path.exists():
        raise SystemExit(f"shared prices not found at {path} (../shared is absent)")
    options = SolveOptions()
    prices = load_epf_prices(path)
    print(
        f"market {args.market}, year {args.year}, asset 10 MW / 20 MWh, η=0.85, "
        "degradation 2/MWh, ≤2 cycles/day"
    )
    dispatch_benchmark(prices, args.year, options)
    bid_curve_benchmark(prices, args.year, options)
    t0 = time.perf_counter()
    daily = backtest_storage(prices, ASSET, start=f"{args.year}-01-01", days=365, options=options)
    summary = backtest_summary(daily[daily["day"].dt.year == args.year])
    print(
        f"\nbacktest {args.market} {args.year} ({time.perf_counter() - t0:.1f} s), "
        "revenue at realised prices:"
    )
    print(summary.to_string(index=False, float_format=lambda x: f"{x:,.2f}"))


if __name__ == "__main__":
    main()
