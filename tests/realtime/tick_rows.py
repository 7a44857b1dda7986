"""Bronze tick rows as the CDC consumer hands them to its row sink, for tests of the real-time KPI writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa


def bronze_tick_rows(zone_prices: dict[str, list[float]], start: datetime, offset: int) -> pa.Table:
    """Zone-level five-minute ticks from `start`, five minutes apart per zone, at Kafka offsets from `offset`."""
    rows = [
        (zone, start + timedelta(minutes=5 * i), price)
        for zone, prices in zone_prices.items()
        for i, price in enumerate(prices)
    ]
    n = len(rows)
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "_topic": ["optibid.market.ticks"] * n,
            "_partition": pa.array([0] * n, pa.int32()),
            "_offset": pa.array(range(offset, offset + n), pa.int64()),
            "_ingested_at": pa.array([datetime.now(UTC)] * n, ts),
            "zone": [z for z, _, _ in rows],
            "node": pa.array([None] * n, pa.string()),
            "market": ["RT"] * n,
            "ts_utc": pa.array([t for _, t, _ in rows], ts),
            "interval_minutes": pa.array([5] * n, pa.int32()),
            "price": [p for _, _, p in rows],
            "currency": ["USD"] * n,
        }
    )
