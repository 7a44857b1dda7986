"""Champion selection: the production ensemble is always a candidate and only loses to a model that beats it.

The production factory here is the real pipeline shape (LEAR + DNN, median of the two) made small so the tests
stay fast; the assets' tests (test_assets.py) run the full production pipeline through Dagster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.forecasting.data import ForecastDataError
from ml.forecasting.models import DNN, LEAR
from ml.forecasting.pipeline import ENSEMBLE_NAME, ForecastPipeline, production_pipeline
from ml.forecasting.selection import candidate_pipeline, select_champion, select_zone


def small_production(timezone: str) -> ForecastPipeline:
    return ForecastPipeline(
        [
            LEAR(calibration_windows=(28, 56)),
            DNN(n_members=2, hidden=(32,), max_epochs=20, patience=5, train_days=70, alt_train_days=56),
        ],
        ensemble="median",
        timezone=timezone,
        recalibrate_every_days=7,
    )


def overall(**mae: float) -> pd.DataFrame:
    return pd.DataFrame({"unique_id": "Z", "model": list(mae), "mae": list(mae.values())})


def test_a_single_model_must_strictly_beat_the_ensemble() -> None:
    assert select_champion(overall(ensemble=2.0, LEAR=2.5, seasonal_naive=3.0), "mae") == ("ensemble", 2.0, 2.0)
    assert select_champion(overall(ensemble=2.0, LEAR=2.0), "mae")[0] == "ensemble"  # a tie keeps the title
    assert select_champion(overall(ensemble=2.0, LEAR=1.5, auto_ets=1.5), "mae") == ("LEAR", 1.5, 2.0)
    assert select_champion(overall(ensemble=2.0), "mae")[0] == "ensemble"
    with pytest.raises(ForecastDataError, match="ensemble has no mae"):
        select_champion(overall(LEAR=1.0), "mae")
    with pytest.raises(ValueError, match="lower is better"):
        select_champion(overall(ensemble=1.0), "coverage80")


def test_candidate_pipelines_are_what_gets_published() -> None:
    assert candidate_pipeline("ensemble", "Europe/Paris").settings() == production_pipeline("Europe/Paris").settings()
    lear = candidate_pipeline("LEAR", "UTC")
    assert lear.member_names == ["LEAR"] and lear.primary_model == "LEAR"
    assert lear.settings()["lear_calibration_windows"] == production_pipeline().settings()["lear_calibration_windows"]
    assert lear.aci_gamma == production_pipeline().aci_gamma
    assert candidate_pipeline("seasonal_naive", "UTC").primary_model == "seasonal_naive"


def test_the_ensemble_keeps_the_title_on_real_prices(np_frame: pd.DataFrame) -> None:
    chosen = select_zone(
        np_frame,
        "NP",
        "2017-04-10",
        "2017-04-12",
        "UTC",
        ["seasonal_naive"],
        warmup_days=2,
        production=small_production,
    )
    assert chosen.candidates == [ENSEMBLE_NAME, "seasonal_naive"]
    metrics = chosen.metrics_by_model()
    assert metrics["ensemble"]["mae"] < metrics["seasonal_naive"]["mae"]
    assert chosen.champion == ENSEMBLE_NAME and chosen.champion_key == "ensemble"
    assert chosen.pipeline.primary_model == ENSEMBLE_NAME
    # Same origins, same hours: every candidate was scored on the same rows.
    counts = chosen.result.forecasts.groupby("model").size()
    assert counts.nunique() == 1 and counts.iloc[0] == 3 * 24


def weekly_periodic(zone: str, days: int, timezone: str = "UTC") -> pd.DataFrame:
    """A price that repeats exactly every week: the weekly naive forecast is perfect."""
    ds = pd.date_range(pd.Timestamp("2024-01-01", tz=timezone), periods=days * 24, freq="h").tz_convert("UTC")
    hour = np.arange(len(ds))
    week = 40 + 15 * np.sin(2 * np.pi * hour / 24) + 5 * np.cos(2 * np.pi * hour / 168) + (hour % 168 == 30) * 20
    return pd.DataFrame({"unique_id": zone, "ds": ds, "y": week})


def test_a_model_that_beats_the_ensemble_replaces_it() -> None:
    frame = weekly_periodic("P", 70)
    chosen = select_zone(
        frame,
        "P",
        "2024-03-07",
        "2024-03-09",
        "UTC",
        ["lear", "seasonal_naive"],
        warmup_days=1,
        production=small_production,
    )
    assert chosen.candidates == [ENSEMBLE_NAME, "LEAR", "seasonal_naive"]
    metrics = chosen.metrics_by_model()
    assert metrics["seasonal_naive"]["mae"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["ensemble"]["mae"] > 0
    assert chosen.champion == "seasonal_naive" and chosen.champion_key == "seasonal_naive"
    assert chosen.value < chosen.ensemble_value
    assert chosen.pipeline.member_names == ["seasonal_naive"] and chosen.pipeline.ensemble is None
    assert any("beats the production ensemble" in note for note in chosen.notes)


def test_no_champion_when_the_ensemble_cannot_be_backtested() -> None:
    frame = weekly_periodic("P", 20)  # LEAR needs 28 complete days
    with pytest.raises(ForecastDataError, match="production ensemble cannot be backtested"):
        select_zone(
            frame,
            "P",
            "2024-01-18",
            "2024-01-19",
            "UTC",
            ["seasonal_naive"],
            warmup_days=1,
            production=small_production,
        )


def test_unknown_candidate_names_fail_before_running() -> None:
    with pytest.raises(ValueError, match="unknown model 'prophet'"):
        select_zone(weekly_periodic("P", 70), "P", "2024-03-07", "2024-03-08", "UTC", ["prophet"])


def test_stats_members_are_scored_like_the_others() -> None:
    """Several single models in one call each get their own rows over the same hours."""
    frame = weekly_periodic("P", 70)
    chosen = select_zone(
        frame,
        "P",
        "2024-03-08",
        "2024-03-09",
        "UTC",
        ["auto_theta", "seasonal_naive"],
        warmup_days=1,
        production=small_production,
    )
    assert set(chosen.candidates) == {ENSEMBLE_NAME, "auto_theta", "seasonal_naive"}
    assert set(chosen.result.forecasts["model"]) == set(chosen.candidates)


def test_every_published_row_names_the_model_that_produced_it() -> None:
    from ml.forecasting.daily import forecast_zone, gold_forecast_rows
    from ml.warehouse_reads import Champion

    day = pd.Timestamp("2024-03-10")
    champion = forecast_zone(
        weekly_periodic("P", 70),
        "P",
        "price",
        day,
        "UTC",
        calibration_days=1,
        champion=Champion("seasonal_naive", "3", "backtest-run"),
    )
    assert (champion.model, champion.source) == ("seasonal_naive", "champion")
    assert champion.model_version.startswith("seasonal_naive-") and champion.model_version.endswith("@registry-v3")
    gold = gold_forecast_rows(champion, "run-1", day.date())
    assert set(gold["model"]) == {"seasonal_naive"} and set(gold["model_version"]) == {champion.model_version}

    # A champion that cannot run hands over to the production ensemble, then to the fallback; a multi-model
    # fallback is not the production ensemble and is not called "ensemble".
    short = forecast_zone(
        weekly_periodic("P", 20),
        "P",
        "price",
        pd.Timestamp("2024-01-20"),
        "UTC",
        calibration_days=1,
        champion=Champion("lear", "3", "backtest-run"),
        fallback_models=["seasonal_naive", "auto_theta"],
    )
    assert short.source == "fallback" and short.model == "median(seasonal_naive+auto_theta)"
    assert [n.split(" pipeline")[0] for n in short.notes] == ["champion", "production"]
    assert set(gold_forecast_rows(short, "run-2", day.date())["model"]) == {short.model}
