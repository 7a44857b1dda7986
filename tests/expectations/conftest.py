"""Data-quality fixtures: reference zones as the suites read them, and small silver frames."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def zones() -> pd.DataFrame:
    """Market floors and caps of the reference zones (ingestion/reference.py)."""
    from ingestion.reference import ZONES

    return pd.DataFrame(
        {
            "zone": [z.zone for z in ZONES],
            "price_floor": [z.price_floor for z in ZONES],
            "price_cap": [z.price_cap for z in ZONES],
        }
    )


@pytest.fixture
def prices() -> pd.DataFrame:
    """Six consecutive PJM DA hours, one negative and one exactly at the cap (3700): all legal."""
    ts = pd.date_range("2024-07-10 04:00", periods=6, freq="h", tz="UTC")
    return pd.DataFrame(
        {
            "ts_utc": ts,
            "market_date": pd.Timestamp("2024-07-10").date(),
            "zone": "PJM",
            "node": None,
            "market": "DA",
            "interval_minutes": 60,
            "price": [21.0, -50.0, 35.5, 3700.0, 44.0, 30.0],
            "currency": "USD",
            "org_id": None,
            "revision": 0,
            "is_gap_filled": False,
            "source": "test",
        }
    )
