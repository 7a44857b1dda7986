"""Validate a 1,000,000-row silver.market__prices batch against its Great Expectations suite.

Target: under 5 s for preparation (helper columns) plus validation, on one core. Run:
`python -m benchmarks.gx_validate [--rows N] [--repeat K]`. The first validation of a process also pays for
GX's ephemeral context; it is reported separately.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from expectations.runner import validate_frame
from expectations.suites import SuiteParameters, suite_for
from ingestion.reference import ZONES, pricing_nodes, simulated_zones

FLOORS = {z.zone: z.price_floor for z in ZONES}


def price_frame(rows: int, seed: int = 7) -> pd.DataFrame:
    """`rows` five-minute nodal prices shaped like silver.market__prices: whole series of 288 points a day."""
    nodes = pricing_nodes(12, simulated_zones())  # 108 nodes over the nine simulated zones
    per_series = -(-rows // len(nodes))
    rng = np.random.default_rng(seed)
    node_codes = np.repeat([n[0] for n in nodes], per_series)[:rows]
    zone_codes = np.repeat([n[1] for n in nodes], per_series)[:rows]
    step = np.tile(np.arange(per_series), len(nodes))[:rows]
    ts = pd.Timestamp("2024-07-01", tz="UTC") + pd.to_timedelta(step * 5, unit="min")
    return pd.DataFrame(
        {
            "ts_utc": ts,
            "market_date": ts.date,
            "zone": zone_codes,
            "node": node_codes,
            "market": "RT",
            "interval_minutes": 5,
            # negative prices where the market allows them (IEX's floor is 0)
            "price": np.maximum(rng.normal(45.0, 25.0, rows), [FLOORS[z] for z in zone_codes]),
            "currency": "USD",
            "org_id": None,
            "revision": 0,
            "is_gap_filled": False,
            "source": "benchmark",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    zones = pd.DataFrame(
        {
            "zone": [z.zone for z in ZONES],
            "price_floor": [z.price_floor for z in ZONES],
            "price_cap": [z.price_cap for z in ZONES],
        }
    )
    frame = price_frame(args.rows)
    suite = suite_for("silver.market__prices")
    params = SuiteParameters(zones=zones, previous_row_count=args.rows)

    started = time.perf_counter()
    outcome = validate_frame(frame.head(1000), suite, SuiteParameters(zones=zones))
    print(f"GX context + first small validation: {time.perf_counter() - started:6.2f} s")

    timings = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        prepared = suite.prepare(frame, params)
        t1 = time.perf_counter()
        outcome = validate_frame(frame, suite, params)
        t2 = time.perf_counter()
        timings.append(t2 - t1)
        print(
            f"prepare {t1 - t0:5.2f} s (helper columns only) | prepare + validate {t2 - t1:5.2f} s "
            f"| {args.rows / (t2 - t1):,.0f} rows/s | success={outcome.success}"
        )
        del prepared
    best = min(timings)
    print(
        f"rows={args.rows:,} expectations={outcome.evaluated} best={best:.2f} s target<5 s "
        f"ratio={best / 5.0:.2f} of target"
    )
    if not outcome.success:
        print(outcome.summary())


if __name__ == "__main__":
    main()
