"""On-demand forecast latency: `POST /api/v1/forecasts` for a zone's next 168 hours through the API as deployed
(uvicorn, one worker), from the 202 to the succeeded job, beside the same forecast computed directly in this
process (the peer run: what the job machinery adds), and a 24 h job for scale.

    python -m benchmarks.forecast_jobs [admin_postgres_url]

Creates database `bench_forecast_jobs` on the server (default the local one) with 182 days of synthetic
hourly price and load for one zone (daily and weekly shape, AR noise, price driven by load), so the zone's
production pipeline (LEAR + DNN ensemble, 28 calibration days) runs, as in production.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import httpx

from benchmarks.harness import api_server, load_average, stop_process, wait_until_ready

ZONE, TZ = "ERCOT", "America/Chicago"
HISTORY_DAYS = 182


def _job(base: str, key: str, horizon: int) -> tuple[float, dict]:
    started = time.perf_counter()
    resp = httpx.post(
        f"{base}/api/v1/forecasts",
        json={"zone": ZONE, "horizon_hours": horizon, "time_limit_s": 1800},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    poll = base + resp.json()["poll_url"]
    while True:
        body = httpx.get(poll, headers={"X-API-Key": key}, timeout=60).json()
        if body["status"] in ("succeeded", "failed", "timed_out"):
            return time.perf_counter() - started, body
        time.sleep(0.25)


def main(admin_url: str) -> None:
    from infra import db
    from infra.processes import free_port
    from ml.forecasting import run_forecast_job
    from serving_api import cli
    from tests.ml.analyst_fixtures import synthetic_facts, write_facts

    url = db.create_database(admin_url, "bench_forecast_jobs", drop_existing=True)
    db.migrate(url)
    first = (datetime.now(UTC) - timedelta(days=HISTORY_DAYS)).date()
    write_facts(url, [synthetic_facts(ZONE, TZ, first, HISTORY_DAYS, seed=1)])
    key = cli.create_api_key(url, "acme", "bench", "analyst", rate_limit_per_minute=100_000)
    port = free_port()
    server = api_server(url, port, workers=1)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, 60)
        print(f"forecast job benchmark: zone {ZONE}, {HISTORY_DAYS} days of hourly history; {load_average()}")
        seconds, body = _job(base, key, 168)
        assert body["status"] == "succeeded", body
        result = body["result"]
        print(
            f"168 h job via the API: {seconds:.1f} s from POST to succeeded (job wall {body['wall_seconds']:.1f} s, "
            f"in the worker {result['wall_seconds']:.1f} s; first job of the process includes the worker's "
            f"start-up) | model {result['model']} ({result['source']}) | {load_average()}"
        )
        request = {
            "mode": "zone",
            "zone": ZONE,
            "target": "price",
            "horizon_hours": 168,
            "first_day": body["request"]["first_day"],
            "calibration_days": 28,
        }
        t0 = time.perf_counter()
        direct = run_forecast_job(request, url, "acme")
        direct_s = time.perf_counter() - t0
        assert direct["status"] == "succeeded", direct
        same = direct["result"]["rows"] == result["rows"]
        print(
            f"168 h peer run in this process (run_forecast_job directly): {direct_s:.1f} s | API job / direct = "
            f"{seconds / direct_s:.2f} | identical rows: {same} | {load_average()}"
        )
        seconds24, body24 = _job(base, key, 24)
        print(
            f"24 h job via the API: {seconds24:.1f} s (worker {body24['result']['wall_seconds']:.1f} s) | 168 h / "
            f"24 h = {seconds / seconds24:.2f} | {load_average()}"
        )
    finally:
        stop_process(server, 30)
        db.drop_database(admin_url, "bench_forecast_jobs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("admin_url", nargs="?", default="postgresql://postgres@127.0.0.1:5432/postgres")
    main(parser.parse_args().admin_url)
