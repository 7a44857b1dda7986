"""The production loop: ordered intervals, ensembles, no leakage, DST days, backtest metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.forecasting.data import FORECAST_COLUMNS, local_day_hours_utc
from ml.forecasting.models import LEAR, StatsForecastModels
from ml.forecasting.pipeline import ForecastPipeline, production_pipeline

SMALL_WINDOWS = (28, 56)


def small_pipeline(ensemble: str | None = "median", timezone: str = "UTC") -> ForecastPipeline:
    return ForecastPipeline(
        [LEAR(calibration_windows=SMALL_WINDOWS), StatsForecastModels(("seasonal_naive",))],
        ensemble=ensemble,
        timezone=timezone,
        recalibrate_every_days=7,
    )


def assert_ordered(rows: pd.DataFrame) -> None:
    bands = rows[["lo95", "lo80", "q50", "hi80", "hi95"]].to_numpy()
    assert np.isfinite(bands).all()
    assert (np.diff(bands, axis=1) >= 0).all()
    assert (rows["lo80"] == rows["q10"]).all() and (rows["hi80"] == rows["q90"]).all()


def test_backtest_metrics_and_ordered_intervals(np_frame: pd.DataFrame) -> None:
    pipe = small_pipeline("inverse_error")
    result = pipe.backtest(np_frame, "2017-04-10", "2017-04-13", warmup_days=3)
    rows = result.forecasts
    assert list(rows.columns[: len(FORECAST_COLUMNS)]) == FORECAST_COLUMNS
    assert set(rows["model"]) == {"LEAR", "seasonal_naive", "ensemble"}
    assert len(rows) == 4 * 24 * 3
    assert_ordered(rows)
    overall = result.overall().set_index("model")
    for col in ("mae", "rmse", "smape", "rmae", "pinball", "coverage80", "coverage95"):
        assert overall[col].notna().all()
    # rMAE is against the weekly naive, and the seasonal naive model is exactly that forecast.
    assert overall.loc["seasonal_naive", "rmae"] == pytest.approx(1.0)
    assert overall.loc["LEAR", "rmae"] < 1.0
    per_hour = pd.DataFrame(result.metrics["per_hour"])
    per_day = pd.DataFrame(result.metrics["per_day"])
    assert len(per_hour) == 24 * 3 and len(per_day) == 4 * 3
    assert per_day["day"].iloc[0] == "2017-04-10"


def test_no_value_after_the_origin_is_used(np_frame: pd.DataFrame) -> None:
    """Poison all prices from the origin on and all exogenous values after the target day: same forecasts."""
    pipe = small_pipeline("median")
    day = pd.Timestamp("2017-04-12")
    clean = pipe.forecast_day(np_frame, day, calibration_days=3)
    origin = day.tz_localize("UTC")
    poisoned = np_frame.copy()
    poisoned.loc[poisoned["ds"] >= origin, "y"] = np.nan
    poisoned.loc[poisoned["ds"] >= origin + pd.Timedelta(hours=12), "y"] = 1e9
    after_day = poisoned["ds"] >= origin + pd.Timedelta(days=1)
    poisoned.loc[after_day, ["grid_load_forecast", "wind_power_forecast"]] = -1e9
    dirty = small_pipeline("median").forecast_day(poisoned, day, calibration_days=3)
    pd.testing.assert_frame_equal(clean, dirty)
    # The poison is not inert: the same values before the origin change the forecast.
    early = np_frame.copy()
    early.loc[early["ds"] == origin - pd.Timedelta(hours=1), "y"] = 1e4
    changed = small_pipeline("median").forecast_day(early, day, calibration_days=3)
    assert not np.allclose(changed["y_hat"], clean["y_hat"])


def test_backtest_is_unchanged_by_poisoned_future(np_frame: pd.DataFrame) -> None:
    cut = pd.Timestamp("2017-04-14", tz="UTC")
    poisoned = np_frame.copy()
    poisoned.loc[poisoned["ds"] >= cut, ["y", "grid_load_forecast", "wind_power_forecast"]] = 1e9
    pipe = ForecastPipeline(
        [LEAR(calibration_windows=SMALL_WINDOWS)], ensemble=None, recalibrate_every_days=2
    )
    a = pipe.run(np_frame, "2017-04-11", "2017-04-13")
    b = ForecastPipeline(
        [LEAR(calibration_windows=SMALL_WINDOWS)], ensemble=None, recalibrate_every_days=2
    ).run(poisoned, "2017-04-11", "2017-04-13")
    pd.testing.assert_frame_equal(a, b)


def test_dst_days_in_paris_have_23_and_25_forecast_hours(paris_frame: pd.DataFrame) -> None:
    pipe = ForecastPipeline(
        [LEAR(calibration_windows=SMALL_WINDOWS), StatsForecastModels(("auto_theta",))],
        ensemble="median",
        timezone="Europe/Paris",
        recalibrate_every_days=7,
    )
    for day, n_hours in (("2017-03-26", 23), ("2017-10-29", 25)):
        rows = pipe.forecast_day(paris_frame, day, calibration_days=2)
        for model, block in rows.groupby("model"):
            assert len(block) == n_hours, model
            assert block["ds"].tolist() == list(local_day_hours_utc(day, "Europe/Paris"))
        assert_ordered(rows)
        lear = rows[rows["model"] == "LEAR"].set_index("ds")["y_hat"]
        if n_hours == 25:
            repeated = lear[lear.index.tz_convert("Europe/Paris").hour == 2]
            assert len(repeated) == 2 and repeated.iloc[0] == repeated.iloc[1]


def test_missing_exogenous_for_the_target_day_is_reported(np_frame: pd.DataFrame) -> None:
    frame = np_frame[np_frame["ds"] < "2017-04-12 05:00"]
    with pytest.raises(ValueError, match="exogenous forecasts missing for 2017-04-12"):
        small_pipeline().forecast_day(frame, "2017-04-12", calibration_days=1)


def test_production_pipeline_settings() -> None:
    pipe = production_pipeline("Europe/Paris", recalibrate_every_days=7, alpha_refresh_days=28)
    settings = pipe.settings()
    assert settings["lear_calibration_windows"] == [[56, 84, 1092, 1456]]
    assert pipe.models[0].alpha_refresh_every == 4 and pipe.primary_model == "LEAR"
