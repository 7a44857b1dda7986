"""Reading epftoolbox-shaped CSVs robustly, the long-frame checks, and local-day/DST helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.forecasting.data import (
    ForecastDataError,
    day_matrix,
    local_day_hours_utc,
    read_price_csv,
    slot_of_hours,
    validated_long_frame,
)
from tests.ml.conftest import epf_csv


def test_reads_all_three_markets_with_their_formats() -> None:
    for market, exog in (
        ("NP", ["grid_load_forecast", "wind_power_forecast"]),
        ("PJM", ["system_load_forecast", "zonal_comed_load_foecast", "temperature"]),
        ("FR", ["generation_forecast", "system_load_forecast"]),
    ):
        frame = read_price_csv(epf_csv(market))
        assert list(frame.columns) == ["unique_id", "ds", "y", *exog]
        assert len(frame) == 52416 and frame["ds"].is_monotonic_increasing
        assert str(frame["ds"].dt.tz) == "UTC" and frame["y"].notna().all()
    pjm = read_price_csv(epf_csv("PJM"))
    assert pjm["ds"].iloc[1] == pd.Timestamp("2013-01-01 01:00", tz="UTC")


def test_messy_csv_headers_and_timezone(tmp_path: Path) -> None:
    path = tmp_path / "zone.csv"
    path.write_text(
        " Date ,  Price (EUR) , Load-Forecast\n2021/3/28 0:00,10,1\n2021/3/28 1:00,11,2\n"
        "2021/3/28 3:00,12,3\n"
    )
    frame = read_price_csv(path, unique_id="Z", timezone="Europe/Paris")
    assert list(frame.columns) == ["unique_id", "ds", "y", "load_forecast"]
    # 00:00 and 01:00 CET are 23:00 and 00:00 UTC; 03:00 CEST (after the jump) is 01:00 UTC.
    assert frame["ds"].dt.hour.tolist() == [23, 0, 1]


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Date,Price\n2021-01-01 00:00,10\nnot a date,11\n")
    with pytest.raises(ForecastDataError, match=r"unparseable timestamps.*not a date"):
        read_price_csv(path)
    one_col = tmp_path / "one.csv"
    one_col.write_text("Date\n2021-01-01\n")
    with pytest.raises(ForecastDataError, match="at least a timestamp and a price"):
        read_price_csv(one_col)
    dup = pd.DataFrame(
        {"unique_id": "Z", "ds": pd.to_datetime(["2021-01-01", "2021-01-01"], utc=True), "y": [1.0, 2.0]}
    )
    with pytest.raises(ForecastDataError, match="duplicated"):
        validated_long_frame(dup)
    naive = dup.iloc[:1].assign(ds=pd.Timestamp("2021-01-01"))
    with pytest.raises(ForecastDataError, match="timezone-aware"):
        validated_long_frame(naive)


def test_local_days_have_23_24_25_hours_and_slots() -> None:
    spring = local_day_hours_utc("2021-03-28", "Europe/Paris")
    autumn = local_day_hours_utc("2021-10-31", "Europe/Paris")
    assert (len(spring), len(local_day_hours_utc("2021-06-01", "Europe/Paris")), len(autumn)) == (23, 24, 25)
    assert 2 not in slot_of_hours(spring, "Europe/Paris")
    assert list(slot_of_hours(autumn, "Europe/Paris")).count(2) == 2


def test_day_matrix_fills_the_missing_slot_and_averages_the_repeated_one() -> None:
    hours = local_day_hours_utc("2021-03-28", "Europe/Paris").append(
        local_day_hours_utc("2021-10-31", "Europe/Paris")
    )
    slots = slot_of_hours(hours, "Europe/Paris")
    frame = pd.DataFrame({"unique_id": "Z", "ds": hours, "y": slots.astype(float)})
    frame.loc[(frame["ds"] >= "2021-10-31") & (slots == 2), "y"] = [1.0, 3.0]
    mat = day_matrix(frame, "Europe/Paris", ["y"])
    spring, autumn = mat.values["y"][mat.row_of("2021-03-28")], mat.values["y"][mat.row_of("2021-10-31")]
    assert spring[2] == pytest.approx(2.0)  # interpolated between slots 1 and 3
    assert autumn[2] == pytest.approx(2.0)  # mean of the two 02:00 hours
    assert np.isnan(mat.values["y"][1:-1]).all()  # days in between have no data
