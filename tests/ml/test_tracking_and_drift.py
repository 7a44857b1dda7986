"""MLflow tracking (real SQLite store) and Evidently drift reports on real NP data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ml.forecasting.models import LEAR
from ml.forecasting.pipeline import ForecastPipeline
from ml.monitoring.drift import drift_by_zone


@pytest.fixture(scope="module")
def small_backtest(np_frame: pd.DataFrame) -> tuple[ForecastPipeline, object]:
    pipe = ForecastPipeline([LEAR(calibration_windows=(28,))], ensemble=None, recalibrate_every_days=7)
    return pipe, pipe.backtest(np_frame, "2017-04-10", "2017-04-11", warmup_days=1)


def test_backtest_run_is_logged_and_registered_as_champion(tmp_path: Path, small_backtest, np_frame) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from ml.forecasting.tracking import champion_version, load_champion, log_backtest_run, register_champion

    pipe, result = small_backtest
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run_id = log_backtest_run(result, uri, zone="NP", pipeline=pipe)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["LEAR.mae"] == pytest.approx(result.overall()["mae"].iloc[0])
    assert run.data.params["recalibrate_every_days"] == "7"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"forecast_vs_actual_NP.png", "metrics_per_hour.csv"} <= artifacts
    assert (tmp_path / "mlflow" / "artifacts").exists()  # not ./mlruns
    assert champion_version("NP", uri) is None
    assert register_champion(run_id, "NP", uri) == "1"
    assert champion_version("NP", uri) == "1"
    model = load_champion("NP", uri)
    model.unwrap_python_model().calibration_days = 1  # keep the test small
    history_and_day = np_frame[np_frame["ds"] < "2017-04-14"].copy()
    history_and_day.loc[history_and_day["ds"] >= "2017-04-13", "y"] = float("nan")
    rows = model.predict(history_and_day)
    assert len(rows) == 24 and rows["y_hat"].notna().all()
    assert rows["ds"].min() == pd.Timestamp("2017-04-13", tz="UTC")


def test_drift_flags_a_shifted_target_and_forecast_error(tmp_path: Path, np_frame: pd.DataFrame) -> None:
    reference = np_frame[np_frame["ds"] < "2017-02-01"]
    calm = np_frame[(np_frame["ds"] >= "2017-02-01") & (np_frame["ds"] < "2017-03-01")]
    shifted = calm.assign(y=calm["y"] + 40.0)
    # A daily-naive forecast that did not see the +40 shift: its errors drift too.
    fc_ref = reference[["unique_id", "ds"]].assign(model="m", y_hat=reference["y"].shift(24))
    fc_cur = shifted[["unique_id", "ds"]].assign(model="m", y_hat=calm["y"].shift(24))
    out = drift_by_zone(reference, shifted, tmp_path, fc_ref, fc_cur, model="m")
    row = out.iloc[0]
    assert row["unique_id"] == "NP" and row["n_columns"] == 4
    assert bool(row["target_drift"]) and bool(row["error_drift"])
    assert 0.5 <= row["drift_share"] <= 1.0
    html = Path(row["report_path"])
    assert html.exists() and html.stat().st_size > 10_000
    same = drift_by_zone(reference, reference, tmp_path / "same")
    assert same.iloc[0]["drift_share"] == 0.0 and same.iloc[0]["error_drift"] is None
