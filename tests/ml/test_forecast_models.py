"""Each model family fits and predicts one real day (NP, 2017) through the common Forecaster interface."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ml.forecasting.data import local_day_start_utc
from ml.forecasting.models import (
    DNN,
    LEAR,
    NEURAL_MODELS,
    STATS_MODELS,
    NeuralForecastModels,
    StatsForecastModels,
    forecaster_for,
)


def split_day(frame: pd.DataFrame, day: str) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    origin = local_day_start_utc(day, "UTC")
    history = frame[frame["ds"] < origin]
    target = frame[(frame["ds"] >= origin) & (frame["ds"] < origin + pd.Timedelta(days=1))]
    return history, target.drop(columns="y"), target["y"].to_numpy()


def check_output(out: pd.DataFrame, future: pd.DataFrame, actual: np.ndarray, names: list[str], max_mae: float) -> None:
    assert set(out["model"]) == set(names)
    for name in names:
        rows = out[out["model"] == name].sort_values("ds")
        assert rows["ds"].tolist() == future["ds"].tolist()
        assert rows["y_hat"].notna().all()
        mae = float(np.mean(np.abs(rows["y_hat"].to_numpy() - actual)))
        assert mae < max_mae, f"{name}: MAE {mae:.2f} on a calm NP day is implausible"


def test_lear_fits_and_predicts(np_frame: pd.DataFrame) -> None:
    history, future, actual = split_day(np_frame, "2017-04-20")
    model = LEAR(calibration_windows=(28, 56))
    out = model.fit(history).predict(history, future)
    check_output(out, future, actual, ["LEAR"], max_mae=5.0)
    fits = model._fits["NP"]
    assert set(fits) == {28, 56} and all(f.coef.shape == (24, 24 * 4 + 24 * 2 * 3 + 7) for f in fits.values())
    # A refit between alpha selections keeps the alphas and re-estimates the coefficients.
    refit = LEAR(calibration_windows=(28, 56), alpha_refresh_every=2)
    refit.fit(history)
    alphas = {w: f.alpha.copy() for w, f in refit._fits["NP"].items()}
    refit.fit(np_frame[np_frame["ds"] < future["ds"].min() + pd.Timedelta(days=1)])
    assert all(np.array_equal(alphas[w], f.alpha) for w, f in refit._fits["NP"].items())


def test_dnn_fits_predicts_and_refits_on_schedule(np_frame: pd.DataFrame) -> None:
    history, future, actual = split_day(np_frame, "2017-04-20")
    # Small networks and few epochs keep this a wiring test; accuracy is the benchmark's business.
    model = DNN(n_members=2, hidden=(32,), max_epochs=30, patience=5, train_days=70, alt_train_days=56, refit_every=2)
    out = model.fit(history).predict(history, future)
    check_output(out, future, actual, ["DNN"], max_mae=15.0)
    assert len(model._members["NP"]) == 2 and 1 <= max(model.last_epochs) <= 30
    first = [net[0].weight.detach().clone() for _, net in model._members["NP"]]
    model.fit(history)  # 2nd call: not a refit day, weights kept
    assert all(torch.equal(a, net[0].weight) for a, (_, net) in zip(first, model._members["NP"], strict=True))
    model.fit(history)  # 3rd call: retrained, warm-started from the previous weights
    assert not all(torch.equal(a, net[0].weight) for a, (_, net) in zip(first, model._members["NP"], strict=True))
    # Same data and seed: same forecast (the validation days and the initialisation are deterministic).
    again = DNN(n_members=2, hidden=(32,), max_epochs=30, patience=5, train_days=70, alt_train_days=56)
    np.testing.assert_allclose(again.fit(history).predict(history, future)["y_hat"], out["y_hat"], rtol=1e-5)
    assert isinstance(forecaster_for("dnn"), DNN)


def test_dnn_rejects_a_too_short_history(np_frame: pd.DataFrame) -> None:
    history = split_day(np_frame, "2017-01-25")[0]
    with pytest.raises(ValueError, match="DNN needs at least 28 complete days"):
        DNN().fit(history)


def test_statsforecast_models_fit_and_predict(np_frame: pd.DataFrame) -> None:
    history, future, actual = split_day(np_frame, "2017-04-20")
    out = StatsForecastModels(kinds=STATS_MODELS, input_days=21).predict(history, future)
    check_output(out, future, actual, list(STATS_MODELS), max_mae=10.0)
    naive = out[out["model"] == "seasonal_naive"].sort_values("ds")["y_hat"].to_numpy()
    week_before = history[history["ds"] >= future["ds"].min() - pd.Timedelta(days=7)]["y"].to_numpy()[:24]
    assert np.allclose(naive, week_before)


def test_neural_models_fit_and_predict(np_frame: pd.DataFrame) -> None:
    pytest.importorskip("neuralforecast", reason="neuralforecast (torch CPU) is an optional dependency")
    history, future, actual = split_day(np_frame, "2017-04-20")
    # Tiny training (3 steps) keeps this a wiring test; accuracy is the benchmark's business.
    model = NeuralForecastModels(kinds=NEURAL_MODELS, max_steps=3, train_days=14, input_days=2, batch_size=8)
    out = model.fit(history).predict(history, future)
    check_output(out, future, actual, ["NHITS", "NBEATSx", "TFT"], max_mae=60.0)
    assert isinstance(forecaster_for("nbeatsx"), NeuralForecastModels)


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model 'prophet'"):
        forecaster_for("prophet")
