"""Unrestricted resource consumption (OWASP API4): every request dimension has a bound, and exceeding it is
a 4xx naming the field and the limit, answered quickly, never a 500."""

from __future__ import annotations

import json
import time
import tracemalloc

import httpx

from tests.security.conftest import V1


def _storage(hours: int, interval_minutes: int = 60) -> dict:
    n = hours * 60 // interval_minutes
    return {
        "time_limit_s": 1,
        "input": {
            "asset": {"asset_id": "b1", "power_mw": 5, "energy_mwh": 10},
            "price_forecast": [30.0 + (i % 24) for i in range(n)],
            "interval_minutes": interval_minutes,
        },
    }


def _bids(hours: int, renewables: int = 1, storage: bool = False, quantiles: int = 3) -> dict:
    levels = [round((k + 1) / (quantiles + 1), 4) for k in range(quantiles)]
    inp: dict = {
        "zone": "PJM",
        "price_quantiles": [
            {"level": lv, "prices": [20.0 + 10 * lv + (h % 24) for h in range(hours)]} for lv in levels
        ],
        "renewables": [
            {"asset_id": f"r{i}", "forecast_mw": [5.0] * hours} for i in range(renewables)
        ],
    }
    if storage:
        inp["storage"] = [{"asset_id": "s1", "power_mw": 5, "energy_mwh": 10}]
    return {"time_limit_s": 1, "input": inp}


def _error_text(resp: httpx.Response) -> str:
    return json.dumps(resp.json())


def test_storage_horizon_over_a_week_is_422(client, auth):
    resp = client.post(f"{V1}/optimize/storage", json=_storage(300), headers=auth("org_a", "trader"))
    assert resp.status_code == 422, resp.text
    assert "168" in _error_text(resp)


def test_bids_with_a_storage_asset_over_200_hours_is_422_not_500(client, auth):
    resp = client.post(f"{V1}/optimize/bids", json=_bids(200, storage=True), headers=auth("org_a", "trader"))
    assert resp.status_code == 422, resp.text
    assert "price_quantiles" in _error_text(resp) and "168" in _error_text(resp)


def test_bids_within_bounds_still_solve(client, auth):
    resp = client.post(f"{V1}/optimize/bids", json=_bids(24, storage=True), headers=auth("org_a", "trader"))
    assert resp.status_code == 200, resp.text


def test_bids_over_quantile_and_asset_limits(client, auth):
    headers = auth("org_a", "trader")
    resp = client.post(f"{V1}/optimize/bids", json=_bids(24, quantiles=21), headers=headers)
    assert resp.status_code == 422 and "at most 20" in _error_text(resp)
    resp = client.post(f"{V1}/optimize/bids", json=_bids(24, renewables=51), headers=headers)
    assert resp.status_code == 422 and "at most 50" in _error_text(resp)


def test_huge_optimize_body_is_413_before_parsing(client, auth):
    # The reported attack: 5 renewables × 80,000 hours (~2.5 MB).
    body = json.dumps(_bids(80_000, renewables=5)).encode()
    tracemalloc.start()
    started = time.perf_counter()
    resp = client.post(
        f"{V1}/optimize/bids",
        content=body,
        headers={**auth("org_a", "trader"), "Content-Type": "application/json"},
    )
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert resp.status_code == 413, resp.text
    assert resp.json()["details"]["field"] == "body" and resp.json()["details"]["limit_bytes"] == 2 * 1024 * 1024
    assert elapsed < 2.0
    assert peak < 3 * len(body)  # the body itself (held by the test) plus little: it was never parsed


def test_streamed_body_without_length_is_cut_at_the_limit(client, auth):
    def chunks():
        for _ in range(64):
            yield b"[" + b"1," * 32_768 + b"1]"

    resp = client.post(
        f"{V1}/optimize/storage",
        content=chunks(),
        headers={**auth("org_a", "trader"), "Content-Type": "application/json"},
    )
    assert resp.status_code == 413, resp.text
    assert "2097152" in resp.json()["message"]


def test_unauthenticated_body_is_refused_before_it_is_read(client):
    started = time.perf_counter()
    resp = client.post(
        f"{V1}/optimize/bids",
        content=b"{" + b" " * 1_500_000 + b"}",
        headers={"X-API-Key": "obk_0123456789ab_nope", "Content-Type": "application/json"},
    )
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_api_key"
    assert time.perf_counter() - started < 2.0


def test_page_size_and_query_shape_are_bounded(client, auth):
    headers = auth("org_a", "viewer")
    resp = client.get(f"{V1}/prices", params={"zone": "PJM", "limit": 100_001}, headers=headers)
    assert resp.status_code == 422 and "limit" in _error_text(resp)
    resp = client.get(f"{V1}/zones", params={"junk": "1"}, headers=headers)
    assert resp.status_code == 400 and resp.json()["details"]["field"] == "junk"
    many = {f"p{i}": "1" for i in range(40)}
    resp = client.get(f"{V1}/zones", params=many, headers=headers)
    assert resp.status_code == 400 and resp.json()["code"] == "too_many_parameters"


def test_analytics_spans_are_bounded(client, auth):
    headers = auth("org_a", "viewer")
    resp = client.get(
        f"{V1}/analytics/price-anomalies",
        params={"start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
        headers=headers,
    )
    assert resp.status_code == 400 and resp.json()["details"]["field"] == "end"
    resp = client.get(
        f"{V1}/analytics/correlations",
        params={"start_day": "2024-01-01", "end_day": "2024-04-01", "window_days": 60},
        headers=headers,
    )
    assert resp.status_code == 400 and resp.json()["details"]["field"] == "window_days"
    resp = client.get(
        f"{V1}/analytics/correlations",
        params={"start_day": "2024-01-01", "end_day": "2024-01-05", "zones": ",".join(f"Z{i}" for i in range(21))},
        headers=headers,
    )
    assert resp.status_code == 400 and resp.json()["details"]["field"] == "zones"


def test_json_lines_with_a_new_key_per_record_stay_linear_and_bounded(tmp_path):
    from ingestion.files.readers import MAX_JSON_COLUMNS, JsonReader

    path = tmp_path / "wide.jsonl"
    with path.open("w") as fh:
        for i in range(20_000):
            fh.write(json.dumps({"zone": "PJM", f"k{i}": i}) + "\n")
    tracemalloc.start()
    started = time.perf_counter()
    reader = JsonReader(path, "jsonl")
    landed = quarantined = 0
    for chunk in reader.chunks():
        landed += chunk.table.num_rows
        quarantined += len(chunk.malformed)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(reader.columns) <= MAX_JSON_COLUMNS
    assert landed + quarantined == 20_000 and quarantined >= 20_000 - MAX_JSON_COLUMNS
    assert elapsed < 20 and peak < 200 * 1024 * 1024


def test_a_large_json_document_that_is_not_an_array_is_refused(tmp_path):
    import pytest

    from ingestion.files.readers import MAX_WHOLE_JSON_BYTES, JsonReader

    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"a": {"b": "x" * (MAX_WHOLE_JSON_BYTES + 10)}}))
    with pytest.raises(ValueError, match="not an array of records"):
        JsonReader(path, "json")

