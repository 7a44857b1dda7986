"""On-demand forecasts end to end: `POST /api/v1/forecasts` through the real app on the migrated warehouse,
the job in a real worker process, the result by polling and by WebSocket push, equal to what the Dagster
`gold/forecasts` asset publishes for the same zone and day; 422s naming the field; time limit; tenancy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets import forecasting as ml_assets
from assets.shared.resources import WarehouseResource
from infra.db import connect
from tests.ml.analyst_fixtures import (
    PREFIX,
    ZONES,
    api_client,
    clear_zones,
    synthetic_facts,
    wait_for_job,
    write_facts,
)

FIRST_DAY = date(2024, 3, 1)
HISTORY_DAYS = 20  # short of LEAR's ~36 days: the pipeline's documented seasonal-naive fallback runs (fast)
START = FIRST_DAY + timedelta(days=HISTORY_DAYS)
CALIBRATION_DAYS = 7


@pytest.fixture(scope="module")
def facts(database_url: str) -> Iterator[dict[str, pd.DataFrame]]:
    frames = {
        z: synthetic_facts(z, tz, FIRST_DAY, HISTORY_DAYS, seed=n + 11) for n, (z, tz) in enumerate(ZONES.items())
    }
    write_facts(database_url, list(frames.values()))
    yield frames
    clear_zones(database_url)


@pytest.fixture(scope="module")
def api(database_url: str, settings, tmp_path_factory, facts):
    with api_client(
        database_url,
        settings,
        tmp_path_factory.mktemp("forecast_jobs_home"),
        forecast_job_calibration_days=CALIBRATION_DAYS,
    ) as pair:
        yield pair


def _post(client, headers, **body):
    return client.post(f"{PREFIX}/forecasts", json=body, headers=headers)


def test_zone_job_matches_the_daily_asset_and_is_pushed_on_the_websocket(api, database_url: str) -> None:
    client, auth = api
    resp = _post(client, auth(), zone="ERCOT", horizon_hours=36)
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["status"] == "queued" and resp.headers["location"] == accepted["poll_url"]
    token = auth()["Authorization"].removeprefix("Bearer ")
    with client.websocket_connect(f"{accepted['websocket_url']}?access_token={token}") as ws:
        messages = []
        while True:
            message = ws.receive_json()
            messages.append(message)
            if message["type"] == "forecast_job":
                break
    pushed = messages[-1]
    assert pushed["status"] == "succeeded", pushed
    assert {m["type"] for m in messages} <= {"forecast_job_status", "heartbeat", "forecast_job"}
    polled = wait_for_job(client, auth(), accepted["job_id"])
    assert polled["result"] == pushed["result"]
    result = polled["result"]
    assert result["hours"] == 36 and len(result["rows"]) == 36
    assert result["source"] == "fallback" and any("production pipeline skipped" in n for n in result["notes"])
    assert polled["request"]["first_day"] == START.isoformat()
    for row in result["rows"]:
        assert row["lo95"] <= row["lo80"] <= row["hi80"] <= row["hi95"]

    # The same zone and day through Dagster: the production asset publishes the same numbers.
    run = dg.materialize(
        [ml_assets.forecasts],
        partition_key=START.isoformat(),
        resources={"warehouse": WarehouseResource(database_url=database_url)},
        run_config={
            "ops": {
                "gold__forecasts": {
                    "config": {"horizon_hours": 36, "calibration_days": CALIBRATION_DAYS, "zones": ["ERCOT"]}
                }
            }
        },
    )
    assert run.success
    with connect(database_url) as conn:
        published = conn.execute(
            """SELECT ts_utc, y_hat FROM gold.forecasts WHERE zone = 'ERCOT' AND target = 'price'
               AND delivery_date = %s ORDER BY ts_utc""",
            (START,),
        ).fetchall()
    job = pd.DataFrame(result["rows"])
    job_y = dict(zip(pd.to_datetime(job["ts_utc"], utc=True), job["y_hat"], strict=True))
    matched = [(y, job_y[pd.Timestamp(ts)]) for ts, y in published if pd.Timestamp(ts) in job_y]
    assert len(matched) == 36
    assert np.allclose([a for a, _ in matched], [b for _, b in matched])


def _series(facts: pd.DataFrame, horizon: int) -> dict:
    history = facts.iloc[: len(facts) - 24]  # whole local days: the last one is held out as the horizon
    ahead = facts.iloc[len(facts) - 24 :]
    return {
        "series": {
            "timestamps": [t.isoformat() for t in history["ts_utc"]],
            "values": history["price"].round(3).tolist(),
            "exogenous": {"load": history["load"].round(1).tolist()},
        },
        "future_exogenous": {"load": ahead["load"].round(1).tolist()[:horizon] + [10_000.0] * max(0, horizon - 24)},
        "timezone": "America/Los_Angeles",
        "horizon_hours": horizon,
    }


def test_uploaded_series_with_exogenous_columns(api, facts) -> None:
    client, auth = api
    resp = _post(client, auth(), **_series(facts["CAISO"], 30))
    assert resp.status_code == 202, resp.text
    body = wait_for_job(client, auth(), resp.json()["job_id"])
    assert body["status"] == "succeeded", body
    assert body["result"]["hours"] == 30
    assert body["request"]["series"]["exogenous"] == ["load"] and "values" not in body["request"]["series"]
    first = pd.Timestamp(body["result"]["rows"][0]["ts_utc"])
    assert first == facts["CAISO"]["ts_utc"].iloc[-24]


def test_bad_requests_are_422_naming_the_field(api, facts) -> None:
    client, auth = api
    good = _series(facts["CAISO"], 24)

    def field_of(resp) -> str:
        assert resp.status_code == 422, resp.text
        body = resp.json()
        if isinstance(body["details"], dict):
            return body["details"]["field"]
        return ".".join(body["details"][0]["loc"][1:])

    assert field_of(_post(client, auth(), zone="ERCOT", horizon_hours=169)) == "horizon_hours"
    assert field_of(_post(client, auth(), zone="ERCOT", horizon_hours=0)) == "horizon_hours"
    assert field_of(_post(client, auth(), zone="NOWHERE", horizon_hours=24)) == "zone"
    # PJM has no facts here: too little history.
    too_little = _post(client, auth(), zone="PJM", horizon_hours=24)
    assert field_of(too_little) == "zone" and "too little history" in too_little.json()["message"]
    late = _post(client, auth(), zone="ERCOT", horizon_hours=24, start_date=(START + timedelta(days=3)).isoformat())
    assert field_of(late) == "start_date"
    short = {**good, "series": {k: v[-24 * 10 :] for k, v in good["series"].items() if k != "exogenous"}}
    short["future_exogenous"] = {}
    assert field_of(_post(client, auth(), **short)) == "series.values"
    gap = {**good, "series": {**good["series"], "timestamps": list(good["series"]["timestamps"])}}
    gap["series"]["timestamps"][100] = gap["series"]["timestamps"][99]
    resp = _post(client, auth(), **gap)
    assert field_of(resp) == "series.timestamps" and "gaps" in resp.json()["message"]
    hole = {**good, "series": {**good["series"], "values": list(good["series"]["values"])}}
    hole["series"]["values"][5] = None
    assert field_of(_post(client, auth(), **hole)) == "series.values[5]"
    unknown_tz = {**good, "timezone": "Mars/Olympus"}
    assert field_of(_post(client, auth(), **unknown_tz)) == "timezone"
    missing_future = {**good, "future_exogenous": {"load": [1.0] * 3}}
    assert field_of(_post(client, auth(), **missing_future)) == "future_exogenous.load"
    both = _post(client, auth(), zone="ERCOT", **good)
    assert both.status_code == 422
    viewer = _post(client, auth("acme", "viewer"), zone="ERCOT", horizon_hours=24)
    assert viewer.status_code == 403


def test_time_limit_stops_the_job(api) -> None:
    client, auth = api
    resp = _post(client, auth(), zone="ERCOT", horizon_hours=168, time_limit_s=0.05)
    assert resp.status_code == 202, resp.text
    body = wait_for_job(client, auth(), resp.json()["job_id"])
    assert body["status"] == "timed_out" and body["error"]["field"] == "time_limit_s"
    assert body["result"] is None


def test_jobs_are_the_organizations_own(api) -> None:
    client, auth = api
    job_id = _post(client, auth("acme"), zone="ERCOT", horizon_hours=24).json()["job_id"]
    assert client.get(f"{PREFIX}/forecasts/jobs/{job_id}", headers=auth("voltindia")).status_code == 404
    theirs = client.get(f"{PREFIX}/forecasts/jobs", headers=auth("voltindia"))
    assert theirs.status_code == 200 and job_id not in [j["job_id"] for j in theirs.json()["items"]]
    mine = client.get(f"{PREFIX}/forecasts/jobs", headers=auth("acme"))
    assert job_id in [j["job_id"] for j in mine.json()["items"]]
    token = auth("voltindia")["Authorization"].removeprefix("Bearer ")
    from starlette.websockets import WebSocketDisconnect

    url = f"{PREFIX}/ws/forecasts/jobs/{job_id}?access_token={token}"
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(url) as ws:
        ws.receive_json()
    assert closed.value.code == 4404
    wait_for_job(client, auth("acme"), job_id)
