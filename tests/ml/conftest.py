"""Fixtures for the forecasting tests: short slices of the real EPF markets in ../shared (skip if absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ml.forecasting.data import read_price_csv

EPF_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "epf"


def epf_csv(market: str) -> Path:
    """Path of a shared EPF file, skipping the test when ../shared is not there."""
    path = EPF_DIR / f"{market}.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared holds the team's real EPF datasets (not shipped to users)")
    return path


@pytest.fixture(scope="session")
def np_frame() -> pd.DataFrame:
    """NP (Nord Pool) 2017-01-01 .. 2017-04-30: ~120 days of real prices and exogenous forecasts."""
    frame = read_price_csv(epf_csv("NP"), unique_id="NP")
    keep = (frame["ds"] >= "2017-01-01") & (frame["ds"] < "2017-05-01")
    return frame[keep].reset_index(drop=True)


@pytest.fixture(scope="session")
def paris_frame(np_frame: pd.DataFrame) -> pd.DataFrame:
    """Real NP values laid on a true UTC timeline spanning the Europe/Paris DST changes of 2017.

    Local days have 24 values in the source; here hours are consecutive UTC hours from 2017-01-01 00:00 Paris
    time, so 2017-03-26 has 23 local hours and 2017-10-29 has 25 (the values are real prices re-labelled).
    """
    source = read_price_csv(epf_csv("NP"), unique_id="NP")
    source = source[source["ds"] >= "2017-01-01"].reset_index(drop=True)
    start = pd.Timestamp("2017-01-01", tz="Europe/Paris").tz_convert("UTC")
    end = pd.Timestamp("2017-11-05", tz="Europe/Paris").tz_convert("UTC")
    hours = pd.date_range(start, end, freq="h", inclusive="left")
    frame = source.iloc[: len(hours)].copy()
    frame["ds"] = hours
    frame["unique_id"] = "FR-DST"
    return frame.reset_index(drop=True)


@pytest.fixture(scope="session")
def database_url(database_url: str) -> Iterator[str]:
    """This area's own database: its gold tables must be exactly what dbt builds (see private_database)."""
    from tests.conftest import private_database

    yield from private_database(database_url, "optibid_test_ml")
