"""Accuracy tracking and champion/challenger end to end through Dagster and the API, on the migrated warehouse
and a real MLflow store: the champion publishes, the challenger forecasts in shadow, actuals are scored per
zone, model and horizon day, the promotion rule refuses too few days and then promotes a significantly
better challenger, the next daily forecast uses it; accuracy, decisions and explanations are served."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pytest

from assets import forecasting as ml_assets
from assets.shared.resources import MlflowResource, WarehouseResource
from infra.db import connect
from ml.forecasting.accuracy import ACCURACY_EXPERIMENT, diebold_mariano
from ml.warehouse_reads import champions
from tests.ml.analyst_fixtures import PREFIX, ZONES, api_client, clear_zones, synthetic_facts, write_facts

ZONE = "ERCOT"
FIRST_DAY = date(2024, 5, 1)
HISTORY_DAYS = 45
SCORED = [FIRST_DAY + timedelta(days=HISTORY_DAYS + k) for k in range(6)]
NEXT_DAY = SCORED[-1] + timedelta(days=1)
RULE_DAYS = 5


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[None]:
    write_facts(database_url, [synthetic_facts(ZONE, ZONES[ZONE], FIRST_DAY, HISTORY_DAYS + 7, seed=7)])
    with connect(database_url) as conn:
        conn.execute("DELETE FROM ml.model_selection WHERE zone = %s", (ZONE,))
        # The zone's current champion: a weekly seasonal naive (what a young zone's backtest may have chosen).
        conn.execute(
            """INSERT INTO ml.model_selection (zone, target, model, backtest_run_id, metric)
               VALUES (%s, 'price', 'seasonal_naive', 'fixture', 'mae')""",
            (ZONE,),
        )
    yield
    clear_zones(database_url)


@pytest.fixture(scope="module")
def resources(database_url: str, tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return {"warehouse": WarehouseResource(database_url=database_url), "mlflow": MlflowResource(tracking_uri=uri)}


def _materialize(assets: list, resources: dict, partition: str | None = None, **configs: dict) -> dg.ExecuteInJobResult:
    run_config = {"ops": {op: {"config": config} for op, config in configs.items()}}
    result = dg.materialize(assets, partition_key=partition, resources=resources, run_config=run_config)
    assert result.success
    return result


def _publish_and_shadow(day: date, resources: dict) -> None:
    _materialize(
        [ml_assets.forecasts, ml_assets.shadow_forecasts],
        resources,
        day.isoformat(),
        gold__forecasts={"calibration_days": 2, "targets": ["price"], "zones": [ZONE]},
        ml__shadow_forecasts={"challenger_model": "lear", "calibration_days": 2, "zones": [ZONE]},
    )


def _score(day: date, resources: dict) -> None:
    _materialize(
        [ml_assets.forecast_accuracy_scores],
        resources,
        day.isoformat(),
        ml__forecast_accuracy={"targets": ["price"], "zones": [ZONE]},
    )


def _promote(resources: dict) -> dg.ExecuteInJobResult:
    return _materialize(
        [ml_assets.champion_promotion], resources, ml__champion_promotion={"days": RULE_DAYS, "zones": [ZONE]}
    )


def test_diebold_mariano_matches_its_definition() -> None:
    rng = np.random.default_rng(3)
    actual = rng.normal(50, 10, (30, 24))
    worse = actual + rng.normal(0, 4, actual.shape)
    better = actual + rng.normal(0, 2, actual.shape)
    dm = diebold_mariano(actual, worse, better)
    d = np.abs(actual - worse).mean(axis=1) - np.abs(actual - better).mean(axis=1)
    assert dm.statistic == pytest.approx(d.mean() / np.sqrt(d.var() / len(d)))
    assert dm.p_value < 1e-6 and dm.days == 30
    assert diebold_mariano(actual, better, worse).p_value > 0.999


@pytest.fixture(scope="module")
def tracked(seeded, resources: dict, database_url: str) -> dict:
    """Six days published, shadowed and scored; the promotion asked after two days and after six."""
    for day in SCORED[:2]:
        _publish_and_shadow(day, resources)
        _score(day, resources)
    early = _promote(resources)
    with connect(database_url) as conn:
        early_champion = champions(conn)[(ZONE, "price")].model
    for day in SCORED[2:]:
        _publish_and_shadow(day, resources)
        _score(day, resources)
    late = _promote(resources)
    return {"early": early, "early_champion": early_champion, "late": late}


def test_every_published_and_shadow_forecast_is_scored(tracked, database_url: str) -> None:
    with connect(database_url) as conn:
        rows = conn.execute(
            """SELECT role, model, horizon_day, count(*), min(n_hours), avg(mae)
               FROM ml.forecast_accuracy WHERE zone = %s GROUP BY 1, 2, 3 ORDER BY 1""",
            (ZONE,),
        ).fetchall()
    by_role = {r[0]: r for r in rows}
    assert set(by_role) == {"champion", "challenger"}
    assert by_role["champion"][1:5] == ("seasonal_naive", 1, len(SCORED), 24)
    assert by_role["challenger"][1:5] == ("LEAR", 1, len(SCORED), 24)
    assert by_role["challenger"][5] < by_role["champion"][5]  # LEAR sees the load-driven shape


def test_promotion_needs_enough_days_then_a_significant_win(tracked, database_url: str) -> None:
    assert tracked["early_champion"] == "seasonal_naive"
    with connect(database_url) as conn:
        decisions = conn.execute(
            """SELECT days, promoted, reason, p_value, challenger_mae < champion_mae FROM ml.promotion_decisions
               WHERE zone = %s ORDER BY decided_at""",
            (ZONE,),
        ).fetchall()
        champion = champions(conn)[(ZONE, "price")]
    assert len(decisions) == 2
    early, late = decisions
    assert early[:2] == (2, False) and "not enough days" in early[2]
    assert late[0] == RULE_DAYS and late[1] is True and late[3] < 0.05 and late[4] is True
    assert champion.model == "lear" and champion.backtest_run_id == tracked["late"].run_id


def test_the_promoted_challenger_publishes_next_and_is_no_longer_shadowed(tracked, resources, database_url) -> None:
    result = _materialize(
        [ml_assets.forecasts, ml_assets.shadow_forecasts],
        resources,
        NEXT_DAY.isoformat(),
        gold__forecasts={"calibration_days": 2, "targets": ["price"], "zones": [ZONE]},
        ml__shadow_forecasts={"challenger_model": "lear", "calibration_days": 2, "zones": [ZONE]},
    )
    with connect(database_url) as conn:
        models = conn.execute(
            "SELECT DISTINCT model FROM gold.forecasts WHERE zone = %s AND delivery_date = %s", (ZONE, NEXT_DAY)
        ).fetchall()
    assert models == [("LEAR",)]
    shadow = result.asset_materializations_for_node("ml__shadow_forecasts")[0].metadata["skipped"].value
    assert "already the champion" in shadow[ZONE]


def test_accuracy_over_time_is_plotted_in_mlflow(tracked, resources) -> None:
    from mlflow.tracking import MlflowClient

    uri = resources["mlflow"].uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(ACCURACY_EXPERIMENT)
    latest = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    history = client.get_metric_history(latest.info.run_id, f"mae.{ZONE}.price.champion.h1")
    assert len(history) == len(SCORED)
    assert [m.step for m in history] == sorted(m.step for m in history)
    artifacts = [a.path for a in client.list_artifacts(latest.info.run_id)]
    assert f"accuracy_{ZONE}_price.png" in artifacts


def test_accuracy_promotions_and_explanations_are_served(tracked, resources, database_url, settings, tmp_path_factory):
    _materialize(
        [ml_assets.forecast_explanations],
        resources,
        SCORED[-1].isoformat(),
        ml__forecast_explanations={"dnn_members": 1, "dnn_max_epochs": 3, "zones": [ZONE]},
    )
    with api_client(database_url, settings, tmp_path_factory.mktemp("quality_home")) as (client, auth):
        window = {"from": SCORED[0].isoformat(), "to": SCORED[-1].isoformat()}
        acc = client.get(
            f"{PREFIX}/forecasts/accuracy", params={"zone": ZONE, **window}, headers=auth("acme", "viewer")
        )
        assert acc.status_code == 200, acc.text
        data = acc.json()["data"]
        assert {(r["role"], r["model"]) for r in data} == {("champion", "seasonal_naive"), ("challenger", "LEAR")}
        assert len(data) == 2 * len(SCORED) and not acc.json()["truncated"]
        only = client.get(
            f"{PREFIX}/forecasts/accuracy", params={"zone": ZONE, "role": "challenger", **window}, headers=auth()
        )
        assert {r["role"] for r in only.json()["data"]} == {"challenger"}
        too_long = client.get(
            f"{PREFIX}/forecasts/accuracy", params={"from": "2020-01-01", "to": "2024-01-01"}, headers=auth()
        )
        assert too_long.status_code == 422 and too_long.json()["details"]["field"] == "from"

        decisions = client.get(f"{PREFIX}/forecasts/promotions", params={"zone": ZONE}, headers=auth()).json()
        assert [d["promoted"] for d in decisions] == [True, False]  # newest first

        resp = client.get(
            f"{PREFIX}/forecasts/explanations",
            params={"zone": ZONE, "delivery_date": SCORED[-1].isoformat(), "top": 5},
            headers=auth(),
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["mlflow_run_id"]
        models = {h["model"] for h in body["hours"]}
        assert models == {"LEAR", "DNN"}
        for hour in body["hours"]:
            assert len(hour["contributions"]) <= 5
            total = hour["baseline"] + sum(c["contribution"] for c in hour["contributions"]) + hour["other_inputs"]
            assert total + hour["residual"] == pytest.approx(hour["y_hat"], abs=1e-6)
            if hour["model"] == "LEAR":
                assert hour["method"] == "exact_linear" and hour["residual"] == 0
        missing = client.get(
            f"{PREFIX}/forecasts/explanations", params={"zone": ZONE, "delivery_date": "2020-01-01"}, headers=auth()
        )
        assert missing.status_code == 404

    from mlflow.tracking import MlflowClient

    artifacts = MlflowClient(tracking_uri=resources["mlflow"].uri()).list_artifacts(body["mlflow_run_id"])
    assert f"explanation_{ZONE}.png" in [a.path for a in artifacts]
