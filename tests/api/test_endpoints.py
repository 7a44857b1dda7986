"""Every endpoint against real Postgres with fixture data: contents, pagination, fields, exports, cache."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
from openpyxl import load_workbook

from tests.api.conftest import DAY0, window

V1 = "/api/v1"


def _error_shape(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "message", "details"}
    if code:
        assert body["code"] == code
    return body


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["listener"] is True
    client.get(f"{V1}/zones")  # an error, counted
    text = client.get("/metrics").text
    assert "optibid_api_request_duration_seconds_bucket" in text
    assert 'route="/api/v1/zones"' in text and "optibid_api_errors_total" in text
    assert "optibid_api_websocket_clients" in text


def test_reference(client, auth):
    zones = client.get(f"{V1}/zones", headers=auth()).json()
    assert [z["zone"] for z in zones] == ["NP", "PJM"]
    nodes = client.get(f"{V1}/nodes", params={"zone": "PJM"}, headers=auth()).json()
    assert [n["node"] for n in nodes] == ["PJM_N1"]
    assets = client.get(f"{V1}/assets", headers=auth()).json()
    assert [a["asset_id"] for a in assets] == ["org_a_bat"]


def test_prices_pages_with_cursor_and_fields(client, auth):
    params = {**window(), "zone": "PJM", "limit": 20, "fields": "ts_utc,price_avg"}
    seen = []
    cursor = None
    for _ in range(5):
        resp = client.get(
            f"{V1}/prices", params={**params, **({"cursor": cursor} if cursor else {})}, headers=auth()
        )
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert all(set(r) == {"ts_utc", "price_avg"} for r in page["data"])
        seen += [r["price_avg"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [30.0 + i for i in range(48)]


def test_prices_5min_load_generation(client, auth):
    five = client.get(
        f"{V1}/prices",
        params={**window(), "granularity": "5min", "node": "PJM_N1", "limit": 1000},
        headers=auth(),
    ).json()
    assert five["count"] == 288 and five["data"][0]["node"] == "PJM_N1"
    load = client.get(f"{V1}/load", params={**window(), "zone": "PJM"}, headers=auth()).json()
    assert load["count"] == 48 and load["data"][0]["load_mw_avg"] == 9000.0
    gen = client.get(f"{V1}/generation", params={**window(), "fuel": "wind"}, headers=auth()).json()
    assert gen["count"] == 48 and {r["fuel"] for r in gen["data"]} == {"wind"}


def test_unknown_field_and_bad_cursor_and_range(client, auth):
    _error_shape(
        client.get(f"{V1}/prices", params={"fields": "price_avg,nope"}, headers=auth()), 400, "unknown_fields"
    )
    _error_shape(client.get(f"{V1}/prices", params={"cursor": "AAAA"}, headers=auth()), 400, "invalid_cursor")
    bad = {"from": DAY0.isoformat(), "to": (DAY0 - timedelta(days=1)).isoformat()}
    _error_shape(client.get(f"{V1}/prices", params=bad, headers=auth()), 400, "invalid_range")
    _error_shape(client.get(f"{V1}/prices", params={"limit": 0}, headers=auth()), 422, "validation_error")
    _error_shape(client.get(f"{V1}/nothing", headers=auth()), 404, "not_found")


def test_kpis(client, auth):
    catalog = client.get(f"{V1}/kpis", headers=auth()).json()
    assert {k["kpi_code"]: k["grains"] for k in catalog}["avg_price"] == ["minute", "hour", "day"]
    values = client.get(
        f"{V1}/kpis/avg_price", params={**window(), "zone": "PJM", "grain": "hour"}, headers=auth()
    ).json()
    assert values["count"] == 48 and values["data"][0]["value"] == 30.0
    _error_shape(client.get(f"{V1}/kpis/unknown_kpi", headers=auth()), 404, "not_found")
    assert client.get(f"{V1}/kpis/avg_price", params={"grain": "week"}, headers=auth()).status_code == 422


def test_forecasts_with_intervals(client, auth):
    page = client.get(
        f"{V1}/forecasts", params={**window(), "zone": "PJM", "target": "price"}, headers=auth()
    ).json()
    assert page["count"] == 24
    row = page["data"][0]
    assert row["lo95"] <= row["lo80"] <= row["q50"] <= row["hi80"] <= row["hi95"]
    assert client.get(f"{V1}/forecasts", params={"target": "load"}, headers=auth()).json()["count"] == 0


def test_optimization_and_uploads(client, auth):
    runs = client.get(f"{V1}/optimization/runs", headers=auth()).json()
    assert {r["run_id"] for r in runs["data"]} == {
        f"{p}_org_a" for p in ("storage_dispatch", "bid_curves", "unit_commitment")
    }
    for kind, run, n in (
        ("storage_schedules", "storage_dispatch", 24),
        ("bid_curves", "bid_curves", 3),
        ("unit_commitment", "unit_commitment", 6),
    ):
        page = client.get(
            f"{V1}/optimization/{kind}", params={"run_id": f"{run}_org_a", "limit": 5}, headers=auth()
        ).json()
        assert page["count"] == min(n, 5) and {r["org_id"] for r in page["data"]} == {"org_a"}
        assert (page["next_cursor"] is None) == (n <= 5)
    uploads = client.get(f"{V1}/uploads", headers=auth()).json()
    assert [u["org_id"] for u in uploads["data"]] == ["org_a"]
    upload_id = uploads["data"][0]["id"]
    one = client.get(f"{V1}/uploads/{upload_id}", headers=auth()).json()
    assert one["status"] == "landed" and one["rows_landed"] == 48


def test_exports_csv_parquet_xlsx(client, auth):
    params = {**window(), "zone": "PJM", "limit": 5}  # exports ignore paging: the whole selection
    csv_resp = client.get(f"{V1}/prices", params={**params, "format": "csv"}, headers=auth())
    assert csv_resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_resp.text)))
    assert len(rows) == 48 and float(rows[-1]["price_avg"]) == 77.0
    pq_resp = client.get(
        f"{V1}/prices", params={**params, "format": "parquet", "fields": "ts_utc,price_avg"}, headers=auth()
    )
    table = pq.read_table(io.BytesIO(pq_resp.content))
    assert table.num_rows == 48 and table.column_names == ["ts_utc", "price_avg"]
    assert str(table.schema.field("ts_utc").type) == "timestamp[us, tz=UTC]"
    xl = client.get(f"{V1}/kpis/avg_price", params={**params, "format": "xlsx"}, headers=auth())
    sheet = load_workbook(io.BytesIO(xl.content), read_only=True).active
    values = list(sheet.values)
    assert values[0][:3] == ("kpi_code", "grain", "zone") and len(values) == 49


@pytest.fixture(scope="module")
def pipeline(database_url, settings, tmp_path_factory):
    """(warehouse URL, API client) on a warehouse whose gold comes from Dagster materializations."""
    from tests.gold.pipeline import pipeline_api, pipeline_warehouse

    url = pipeline_warehouse(database_url)
    with pipeline_api(settings, url, tmp_path_factory.mktemp("pipeline_home")) as client:
        yield url, client


def test_cache_hits_and_invalidation_on_rematerialization(pipeline):
    """A corrected past day reaches the API: the gold partition run bumps the day's version, the cached
    answer is dropped, and the new value is served."""
    from tests.gold.pipeline import (
        PARTITION,
        PRICE_MODELS,
        bearer,
        correct_pjm_price,
        day_window,
        materialize_gold,
        table_versions,
    )

    url, client = pipeline
    versions = table_versions(url)
    assert versions[("gold.fct_prices_hourly", PARTITION)] >= 1  # the build through Dagster signalled
    assert versions[("gold.kpi_values", PARTITION)] >= 1
    headers = bearer(client)
    params = {**day_window(), "zone": "PJM", "fields": "ts_utc,price_avg", "limit": 24}
    first = client.get(f"{V1}/prices", params=params, headers=headers)
    second = client.get(f"{V1}/prices", params=params, headers=headers)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert second.json() == first.json()
    corrected = correct_pjm_price(url, 5, -1.0)
    assert client.get(f"{V1}/prices", params=params, headers=headers).headers["x-cache"] == "hit"  # silver only

    assert materialize_gold(url, PRICE_MODELS).success
    assert table_versions(url)[("gold.fct_prices_hourly", PARTITION)] == versions[
        ("gold.fct_prices_hourly", PARTITION)
    ] + 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the bump reaches the app through its listener
        third = client.get(f"{V1}/prices", params=params, headers=headers)
        if third.headers["x-cache"] != "hit":
            break
        time.sleep(0.05)
    assert third.headers["x-cache"] == "miss"
    served = {datetime.fromisoformat(r["ts_utc"]): r["price_avg"] for r in third.json()["data"]}
    assert served[corrected] == -1.0
    # a range ending today is never cached
    live = client.get(f"{V1}/prices", params={"zone": "PJM"}, headers=headers)
    assert live.headers["x-cache"] == "bypass"


def test_freshness_without_and_with_dagster_instance(client, auth, api_settings):
    body = client.get(f"{V1}/freshness", headers=auth()).json()
    assert body["configured"] is False and "no Dagster instance" in body["message"]
    import dagster as dg

    home = api_settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.from_config(str(home))
    key = dg.AssetKey(["gold", "fct_prices_hourly"])
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition="2024-01-01"))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key, check_name="prices_within_caps", passed=False,
            # a sample of failing rows may hold one organization's values: only the counts reach the API
            metadata={"failed_expectations": 1, "failures": [{"org_id": "acme", "price": 123.4}]},
        )
    )
    body = client.get(f"{V1}/freshness", headers=auth()).json()
    assert body["configured"] is True
    prices = next(t for t in body["tables"] if t["table"] == "gold.fct_prices_hourly")
    assert prices["asset_key"] == "gold/fct_prices_hourly"
    assert prices["last_materialization"]["partition"] == "2024-01-01"
    assert prices["checks"] == [
        {
            "name": "prices_within_caps",
            "passed": False,
            "severity": "ERROR",
            "at": prices["checks"][0]["at"],
            "metadata": {"failed_expectations": "1"},
        }
    ]
    missing = next(t for t in body["tables"] if t["table"] == "gold.bid_curves")
    assert missing["last_materialization"] is None


def test_table_not_materialized_is_503_not_500(client, auth, api_database):
    from infra import db

    with db.connect(api_database) as conn:
        conn.execute("ALTER TABLE gold.fct_load_hourly RENAME TO fct_load_hourly_away")
    client.app.state.api.table_catalog.clear()
    renamed = True
    try:
        _error_shape(client.get(f"{V1}/load", headers=auth()), 503, "dataset_unavailable")
        # once the pipeline builds the table, the API serves it without waiting out the catalog's minute
        with db.connect(api_database) as conn:
            conn.execute("ALTER TABLE gold.fct_load_hourly_away RENAME TO fct_load_hourly")
        renamed = False
        time.sleep(client.app.state.api.options.missing_table_recheck_seconds + 0.2)
        assert client.get(f"{V1}/load", headers=auth()).status_code == 200
    finally:
        if renamed:
            with db.connect(api_database) as conn:
                conn.execute("ALTER TABLE gold.fct_load_hourly_away RENAME TO fct_load_hourly")
        client.app.state.api.table_catalog.clear()


def test_admin_users_api_keys_and_audit(client, auth):
    weak = client.post(
        f"{V1}/users", json={"email": "new@org_a.test", "password": "short", "role": "viewer"}, headers=auth()
    )
    _error_shape(weak, 422, "weak_password")
    created = client.post(
        f"{V1}/users",
        json={"email": "new@org_a.test", "password": "Another-Good-Pass-7", "role": "viewer"},
        headers=auth(),
    )
    assert created.status_code == 201 and created.json()["org_id"] == "org_a"
    dup = client.post(
        f"{V1}/users",
        json={"email": "new@org_a.test", "password": "Another-Good-Pass-7", "role": "viewer"},
        headers=auth(),
    )
    _error_shape(dup, 409, "conflict")
    emails = {u["email"] for u in client.get(f"{V1}/users", headers=auth()).json()}
    assert "new@org_a.test" in emails and not any(e.endswith("org_b.test") for e in emails)
    key = client.post(f"{V1}/api-keys", json={"name": "etl", "role": "viewer"}, headers=auth()).json()
    assert key["api_key"].startswith("obk_")
    listed = client.get(f"{V1}/api-keys", headers=auth()).json()
    assert key["key_id"] in {k["key_id"] for k in listed}
    actions = [a["action"] for a in client.get(f"{V1}/audit", headers=auth()).json()]
    assert "user.create" in actions and "api_key.create" in actions and "login.success" in actions
