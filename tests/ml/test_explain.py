"""Forecast explanations: LEAR contributions are exact (they sum to LEAR's own forecast of every hour), the
DNN's integrated gradients nearly complete (residual reported), and the plot renders."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from ml.forecasting import DNN, LEAR
from ml.forecasting.explain import BASELINE, IG_RESIDUAL, explain_dnn, explain_lear, explanation_png, feature_group
from tests.ml.analyst_fixtures import synthetic_facts

TZ = "Europe/Paris"
DAY = pd.Timestamp("2024-03-31")  # a 23-hour local day (DST starts): slots map onto real hours


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    facts = synthetic_facts("FR", TZ, date(2024, 1, 20), 72, seed=5)
    return facts.rename(columns={"zone": "unique_id", "ts_utc": "ds", "price": "y"})[["unique_id", "ds", "y", "load"]]


def _history(frame: pd.DataFrame) -> pd.DataFrame:
    origin = DAY.tz_localize(TZ).tz_convert("UTC")
    return frame[frame["ds"] < origin]


def test_lear_contributions_sum_to_the_forecast(frame: pd.DataFrame) -> None:
    history = _history(frame)
    lear = LEAR(calibration_windows=(56, 84)).fit(history, TZ)
    future = frame[frame["ds"].isin(pd.date_range(DAY.tz_localize(TZ), periods=23, freq="h").tz_convert("UTC"))]
    predicted = lear.predict(history, future.drop(columns="y"), TZ)
    exp = explain_lear(lear, history, frame, "FR", DAY, TZ)
    assert len(exp.hours) == 23 and exp.contributions.shape == (23, len(exp.features))
    # Exact: baseline + every input's contribution is LEAR's forecast of each hour.
    np.testing.assert_allclose(exp.baseline + exp.contributions.sum(axis=1), exp.forecast, rtol=0, atol=1e-8)
    np.testing.assert_allclose(exp.forecast, predicted["y_hat"].to_numpy(), rtol=0, atol=1e-8)
    long = exp.long()
    sums = long.groupby("ts_utc")["contribution"].sum()
    np.testing.assert_allclose(sums.to_numpy(), long.groupby("ts_utc")["y_hat"].first().to_numpy(), atol=1e-8)
    assert (long["feature"] == BASELINE).sum() == 23
    groups = {feature_group(f) for f in long["feature"]}
    assert "price_d-1" in groups or "load_d" in groups  # the sparse LASSO kept some lag or the load


def test_dnn_integrated_gradients_are_nearly_complete(frame: pd.DataFrame, tmp_path) -> None:
    history = _history(frame)
    dnn = DNN(n_members=2, hidden=(16,), max_epochs=5, train_days=60, alt_train_days=50).fit(history, TZ)
    future = frame[frame["ds"].isin(pd.date_range(DAY.tz_localize(TZ), periods=23, freq="h").tz_convert("UTC"))]
    predicted = dnn.predict(history, future.drop(columns="y"), TZ)["y_hat"].to_numpy()
    exp = explain_dnn(dnn, history, frame, "FR", DAY, TZ)
    np.testing.assert_allclose(exp.forecast, predicted, rtol=1e-4, atol=1e-3)
    total = exp.baseline + exp.contributions.sum(axis=1) + exp.residual
    np.testing.assert_allclose(total, exp.forecast, atol=1e-6)
    # Integrated gradients with 64 steps: the unexplained residual is small against what the inputs explain.
    assert np.abs(exp.residual).max() < 0.05 * np.abs(exp.forecast - exp.baseline).max() + 1e-3
    assert (exp.long()["feature"] == IG_RESIDUAL).sum() == 23
    lear = LEAR(calibration_windows=(56,)).fit(history, TZ)
    png = explanation_png([explain_lear(lear, history, frame, "FR", DAY, TZ), exp], "FR", tmp_path / "x.png")
    assert png.stat().st_size > 10_000
