"""Optimization benchmark: battery dispatch over a year of real prices, 500-generator bid curves, backtest,
and the unit-commitment warm start from the most similar past run.

    python -m benchmarks.optimization [--market PJM] [--year 2017] [--only warm-start]

Prints p50/p95/max solve times (targets: p95 < 50 ms per 24 h hourly instance, < 250 ms per 168 h
15-minute instance, 2 s hard limit, gap ≤ 0.1 %), instances that hit the limit, the bid-curve batch time
(target < 30 s), the revenue table forecast vs perfect foresight vs naive rule, and the warm-start speed-up:
each day's unit commitment (real system load, a 30-unit fleet) is solved once as the "past run"; a revised
forecast of the same day (load +/- 2 %) is then solved cold and warm-started from its nearest past run (by
input embedding, exact scan as on a server without pgvector), alternating, in this process.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import load_average
from ml.optimization import (
    BidCurveInput,
    PriceQuantile,
    RenewableGenerator,
    SolveOptions,
    StorageAsset,
    StorageDispatchInput,
    ThermalUnit,
    UnitCommitmentInput,
    build_bid_curves,
    commitment_warm_start,
    nearest_by_exact_scan,
    run_embedding,
    solve_storage_dispatch,
    solve_unit_commitment,
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


def _stats(label: str, times: list[float], cpu: list[float], target_ms: float, infos: list, violations: int) -> None:
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
    inp = BidCurveInput(zone="PJM", price_quantiles=quantiles, renewables=renewables, thermal=thermal, storage=storage)
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


def _fleet(n: int = 30) -> list[ThermalUnit]:
    return [
        ThermalUnit(
            unit_id=f"g{i:02d}",
            min_output_mw=float(20 + 5 * (i % 7)),
            max_output_mw=float(100 + 20 * (i % 5)),
            marginal_cost=float(20 + 1.5 * i + (i % 3)),
            no_load_cost=float(50 + 10 * (i % 4)),
            startup_cost=float(500 + 100 * (i % 6)),
            min_up_hours=3,
            min_down_hours=2,
        )
        for i in range(n)
    ]


def warm_start_benchmark(path: Path, year: int, days: int = 12, seed: int = 7) -> None:
    """Cold vs warm-started unit commitment of revised day-ahead loads (see the module docstring)."""
    frame = pd.read_csv(path, skipinitialspace=True)
    ts = pd.to_datetime(frame.iloc[:, 0].astype(str).str.strip(), format="mixed")
    load = pd.Series(pd.to_numeric(frame.iloc[:, 2]).to_numpy(), index=ts).sort_index()
    load = load[load.index.year == year]
    fleet = _fleet()
    capacity = sum(u.max_output_mw for u in fleet)
    # The system load scaled so the day's peak needs ~80 % of the fleet with a 10 % reserve.
    scale = 0.8 * capacity / 1.1 / float(load.max())
    rng = np.random.default_rng(seed)
    options = SolveOptions(time_limit_s=60)
    first = pd.Timestamp(f"{year}-01-09")
    past: list[tuple[str, list[float], dict]] = []
    inputs = []
    for d in range(days):
        day = load[first + pd.Timedelta(days=d) : first + pd.Timedelta(days=d, hours=23)]
        inp = UnitCommitmentInput(load_forecast_mw=list(day.to_numpy() * scale), reserve_fraction=0.1, units=fleet)
        result = solve_unit_commitment(inp, options)
        past.append((f"day{d}", run_embedding(inp), result.model_dump(mode="json")))
        revised = inp.model_copy(
            update={"load_forecast_mw": [x * (1 + rng.normal(0, 0.02)) for x in inp.load_forecast_mw]}
        )
        inputs.append(revised)
    cold_s, warm_s, same, complete, own_day = [], [], 0, 0, 0
    for d, revised in enumerate(inputs):
        nearest, _ = nearest_by_exact_scan(run_embedding(revised), [(r, e) for r, e, _ in past], 1)[0]
        own_day += nearest == f"day{d}"
        outputs = next(o for r, _, o in past if r == nearest)
        warm_options = options.model_copy(update={"warm_start_commitment": commitment_warm_start(revised, outputs)})
        t0 = time.perf_counter()
        cold = solve_unit_commitment(revised, options)
        t1 = time.perf_counter()
        warm = solve_unit_commitment(revised, warm_options)
        t2 = time.perf_counter()
        cold_s.append(t1 - t0)
        warm_s.append(t2 - t1)
        complete += warm.info.warm_start
        same += abs((warm.total_cost or 0) - (cold.total_cost or 0)) <= 1e-3 * abs(cold.total_cost or 1)
    # The API's default 2 s limit: how good a solution each start reaches when the limit, not the gap, ends it.
    limited = options.model_copy(update={"time_limit_s": 2.0})
    cold_gap, warm_gap = [], []
    for revised in inputs:
        nearest, _ = nearest_by_exact_scan(run_embedding(revised), [(r, e) for r, e, _ in past], 1)[0]
        outputs = next(o for r, _, o in past if r == nearest)
        hint = {"warm_start_commitment": commitment_warm_start(revised, outputs)}
        for gaps, opts in ((cold_gap, limited), (warm_gap, limited.model_copy(update=hint))):
            info = solve_unit_commitment(revised, opts).info
            gaps.append(info.relative_gap if info.relative_gap is not None else float("inf"))
    cold_a, warm_a = np.array(cold_s), np.array(warm_s)
    print(
        f"\nwarm start, unit commitment {len(fleet)} units x 24 h, {days} revised days of {year} "
        f"(gap <= 0.1 %): cold p50={np.median(cold_a):.2f} s total={cold_a.sum():.1f} s | warm p50="
        f"{np.median(warm_a):.2f} s total={warm_a.sum():.1f} s | speed-up (cold/warm total) "
        f"{cold_a.sum() / warm_a.sum():.2f}x, per-day p50 {np.median(cold_a / warm_a):.2f}x | complete warm "
        f"starts {complete}/{days}, nearest run = the same day's {own_day}/{days}, same cost {same}/{days} | "
        f"{load_average()}"
    )
    print(
        f"  at the API's 2 s limit: relative gap p50 cold {np.median(cold_gap):.2e} (max {max(cold_gap):.2e}), "
        f"warm {np.median(warm_gap):.2e} (max {max(warm_gap):.2e}); days the warm start ends with the smaller gap "
        f"{sum(w < c for w, c in zip(warm_gap, cold_gap, strict=True))}/{days} | {load_average()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--market", default="PJM", choices=["PJM", "NP", "FR"])
    parser.add_argument("--year", type=int, default=2017)
    parser.add_argument("--only", choices=["warm-start"], default=None, help="run one part only")
    args = parser.parse_args()
    path = EPF_DIR / f"{args.market}.csv"
    if not path.exists():
        raise SystemExit(f"shared prices not found at {path} (../shared is absent)")
    if args.only == "warm-start":
        warm_start_benchmark(path, args.year)
        return
    options = SolveOptions()
    prices = load_epf_prices(path)
    print(f"market {args.market}, year {args.year}, asset 10 MW / 20 MWh, η=0.85, degradation 2/MWh, ≤2 cycles/day")
    dispatch_benchmark(prices, args.year, options)
    bid_curve_benchmark(prices, args.year, options)
    t0 = time.perf_counter()
    daily = backtest_storage(prices, ASSET, start=f"{args.year}-01-01", days=365, options=options)
    summary = backtest_summary(daily[daily["day"].dt.year == args.year])
    print(f"\nbacktest {args.market} {args.year} ({time.perf_counter() - t0:.1f} s), revenue at realised prices:")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
    warm_start_benchmark(path, args.year)


if __name__ == "__main__":
    main()
