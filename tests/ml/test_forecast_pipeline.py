"""The production loop: ordered intervals, ensembles, no leakage, DST days, backtest metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.forecasting.data import FORECAST_COLUMNS, local_day_hours_utc
from ml.forecasting.models import DNN, LEAR, StatsForecastModels
from ml.forecasting.pipeline import ForecastPipeline, production_pipeline

SMALL_WINDOWS = (28, 56)


def small_dnn() -> DNN:
    return DNN(n_members=2, hidden=(32,), max_epochs=20, patience=5, train_days=70, alt_train_days=56)


def small_pipeline(ensemble: str | None = "median", timezone: str = "UTC", with_dnn: bool = False) -> ForecastPipeline:
    return ForecastPipeline(
        [
            LEAR(calibration_windows=SMALL_WINDOWS),
            StatsForecastModels(("seasonal_naive",)),
            *([small_dnn()] if with_dnn else []),
        ],
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
    pipe = small_pipeline("median", with_dnn=True)
    day = pd.Timestamp("2017-04-12")
    clean = pipe.forecast_day(np_frame, day, calibration_days=3)
    origin = day.tz_localize("UTC")
    poisoned = np_frame.copy()
    poisoned.loc[poisoned["ds"] >= origin, "y"] = np.nan
    poisoned.loc[poisoned["ds"] >= origin + pd.Timedelta(hours=12), "y"] = 1e9
    after_day = poisoned["ds"] >= origin + pd.Timedelta(days=1)
    poisoned.loc[after_day, ["grid_load_forecast", "wind_power_forecast"]] = -1e9
    dirty = small_pipeline("median", with_dnn=True).forecast_day(poisoned, day, calibration_days=3)
    assert set(clean["model"]) == {"LEAR", "seasonal_naive", "DNN", "ensemble"}
    pd.testing.assert_frame_equal(clean, dirty)
    # The poison is not inert: the same values before the origin change the forecast.
    early = np_frame.copy()
    early.loc[early["ds"] == origin - pd.Timedelta(hours=1), "y"] = 1e4
    changed = small_pipeline("median", with_dnn=True).forecast_day(early, day, calibration_days=3)
    for model in ("LEAR", "DNN"):
        pick = clean["model"] == model
        assert not np.allclose(changed.loc[pick, "y_hat"], clean.loc[pick, "y_hat"]), model


def test_backtest_is_unchanged_by_poisoned_future(np_frame: pd.DataFrame) -> None:
    cut = pd.Timestamp("2017-04-14", tz="UTC")
    poisoned = np_frame.copy()
    poisoned.loc[poisoned["ds"] >= cut, ["y", "grid_load_forecast", "wind_power_forecast"]] = 1e9
    pipe = ForecastPipeline([LEAR(calibration_windows=SMALL_WINDOWS)], ensemble=None, recalibrate_every_days=2)
    a = pipe.run(np_frame, "2017-04-11", "2017-04-13")
    b = ForecastPipeline([LEAR(calibration_windows=SMALL_WINDOWS)], ensemble=None, recalibrate_every_days=2).run(
        poisoned, "2017-04-11", "2017-04-13"
    )
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


def test_adaptive_conformal_widens_intervals_that_miss(np_frame: pd.DataFrame) -> None:
    """A 2-day residual window gives too-narrow intervals; ACI lowers the working alpha until they cover."""

    def run(gamma: float) -> pd.DataFrame:
        pipe = ForecastPipeline(
            [LEAR(calibration_windows=SMALL_WINDOWS)],
            ensemble=None,
            recalibrate_every_days=7,
            conformal_window_days=2,
            aci_gamma=gamma,
        )
        return pipe.backtest(np_frame, "2017-04-08", "2017-04-21", warmup_days=3).forecasts

    plain, adaptive = run(0.0), run(0.1)
    pd.testing.assert_series_equal(plain["y_hat"], adaptive["y_hat"])
    widths = {name: (f["hi80"] - f["lo80"]).mean() for name, f in (("plain", plain), ("aci", adaptive))}
    assert widths["aci"] > widths["plain"]

    def coverage(f: pd.DataFrame) -> float:
        return float(((f["y"] >= f["lo80"]) & (f["y"] <= f["hi80"])).mean())

    assert coverage(adaptive) > coverage(plain)
    assert_ordered(adaptive)


def test_production_pipeline_settings() -> None:
    pipe = production_pipeline("Europe/Paris", recalibrate_every_days=7, alpha_refresh_days=28)
    settings = pipe.settings()
    assert settings["lear_calibration_windows"] == [[56, 84, 1092, 1456]]
    assert settings["models"] == ["LEAR", "DNN"] and pipe.primary_model == "ensemble"
    lear, dnn = pipe.models
    assert lear.alpha_refresh_every == 4 and isinstance(dnn, DNN) and dnn.refit_every == 1
    daily = production_pipeline(recalibrate_every_days=1, dnn_refit_days=7)
    assert daily.models[1].refit_every == 7 and daily.aci_gamma > 0
    alone = production_pipeline(dnn_refit_days=None)
    assert alone.member_names == ["LEAR"] and alone.primary_model == "LEAR"
