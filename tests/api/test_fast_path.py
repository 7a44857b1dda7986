"""The ASGI fast path for cache hits (serving_api.fastpath) against the real app and Postgres: it answers
exactly what the routes would, and everything it must not answer (wrong or revoked credentials, another
organization, an exhausted bucket, an invalidated partition) reaches the routes; the rate limit is shared
by two apps on one home, as by the workers of one server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import DAY0, login

V1 = "/api/v1"


@pytest.fixture(scope="module")
def full_path_client(api_settings) -> Iterator[TestClient]:
    """A second app on the same database and home with the fast path off: the reference behaviour, and a
    second "worker" for the shared rate limit."""
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(api_settings, ApiOptions(cache_fast_path=False, user_rate_limit_per_minute=100_000))
    with TestClient(app) as c:
        yield c


def _day(n: int = 0, days: int = 1) -> dict[str, str]:
    start = DAY0 + timedelta(days=n)
    return {"from": start.isoformat(), "to": (start + timedelta(days=days)).isoformat()}


def _sample(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _fast_hits(client: TestClient) -> float:
    return _sample(client, "optibid_api_cache_fast_path_hits_total")


def _same_answer(a, b) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    drop = {"date", "server"}
    assert [(k, v) for k, v in a.headers.items() if k not in drop] == [
        (k, v) for k, v in b.headers.items() if k not in drop
    ]


def test_hit_is_answered_like_the_route_with_the_same_metrics(client, full_path_client, auth):
    from serving_api import cli

    key = cli.create_api_key(client.app.state.api.database_url, "org_a", "fast", "viewer", rate_limit_per_minute=10_000)
    params = {**_day(), "zone": "PJM", "fields": "ts_utc,price_avg"}
    assert client.get(f"{V1}/prices", params=params, headers={"X-API-Key": key}).headers["x-cache"] == "miss"
    for headers in ({"X-API-Key": key}, auth("org_a", "viewer")):  # one organization: one cached page
        fast_before = _fast_hits(client)
        hits_before = _sample(client, "optibid_api_cache_hits_total")
        count_before = _sample(
            client,
            "optibid_api_request_duration_seconds_count",
            method="GET",
            route="/api/v1/prices",
            status="200",
        )
        fast = client.get(f"{V1}/prices", params=params, headers=headers)
        assert fast.headers["x-cache"] == "hit" and _fast_hits(client) == fast_before + 1
        assert _sample(client, "optibid_api_cache_hits_total") == hits_before + 1
        assert (
            _sample(
                client,
                "optibid_api_request_duration_seconds_count",
                method="GET",
                route="/api/v1/prices",
                status="200",
            )
            == count_before + 1
        )
        # The route's own cache hit (fast path off) gives the same status, headers and bytes.
        full_path_client.get(f"{V1}/prices", params=params, headers=headers)
        routed = full_path_client.get(f"{V1}/prices", params=params, headers=headers)
        assert routed.headers["x-cache"] == "hit" and _fast_hits(full_path_client) == 0
        _same_answer(fast, routed)
    # A path template with a parameter is labelled by its template, as the metrics middleware does.
    kpi = {**_day(), "zone": "PJM"}
    client.get(f"{V1}/kpis/avg_price", params=kpi, headers={"X-API-Key": key})
    assert client.get(f"{V1}/kpis/avg_price", params=kpi, headers={"X-API-Key": key}).headers["x-cache"] == "hit"
    assert _sample(client, "optibid_api_request_duration_seconds_count", route="/api/v1/kpis/{code}") >= 2


def test_wrong_credentials_and_other_orgs_never_get_a_cached_page(client, full_path_client, auth):
    from serving_api import cli

    db_url = client.app.state.api.database_url
    key = cli.create_api_key(db_url, "org_a", "iso", "viewer", rate_limit_per_minute=10_000)
    params = {**_day(), "zone": "PJM"}
    url = f"{V1}/kpis/pnl"  # org-scoped rows: org_a 1000, org_b 2000
    client.get(url, params=params, headers={"X-API-Key": key})
    assert client.get(url, params=params, headers={"X-API-Key": key}).headers["x-cache"] == "hit"
    fast_before = _fast_hits(client)
    prefix = key.split("_")[1]
    for bad in (
        {"X-API-Key": f"obk_{prefix}_not-the-secret"},  # the cached key row's prefix, wrong secret
        {"X-API-Key": "obk_nothex_zzz"},
        {"Authorization": "Bearer x.y.z"},
        {"Authorization": f"Basic {key}"},
        {},
    ):
        resp = client.get(url, params=params, headers=bad)
        assert resp.status_code == 401 and set(resp.json()) == {"code", "message", "details"}, bad
        _same_answer(resp, full_path_client.get(url, params=params, headers=bad))
    # Another organization on the same target: its own page, computed by the route, not org_a's bytes.
    for headers in (
        auth("org_b", "viewer"),
        {"X-API-Key": cli.create_api_key(db_url, "org_b", "b", "viewer")},
    ):
        page = client.get(url, params=params, headers=headers)
        assert {r["value"] for r in page.json()["data"]} == {2000.0}
    assert _fast_hits(client) == fast_before
    assert {r["value"] for r in client.get(url, params=params, headers={"X-API-Key": key}).json()["data"]} == {1000.0}


def test_revoked_credentials_are_refused_even_for_cached_pages(client, auth):
    params = {**_day(), "zone": "NP"}
    created = client.post(f"{V1}/api-keys", json={"name": "revokable", "role": "viewer"}, headers=auth()).json()
    key_headers = {"X-API-Key": created["api_key"]}
    tokens = login(client, "viewer@org_a.test").json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    for headers in (key_headers, bearer):
        client.get(f"{V1}/prices", params=params, headers=headers)
        assert client.get(f"{V1}/prices", params=params, headers=headers).headers["x-cache"] == "hit"
    assert client.delete(f"{V1}/api-keys/{created['key_id']}", headers=auth()).status_code == 200
    assert client.post(f"{V1}/auth/revoke", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    deadline = time.monotonic() + 5  # other workers learn revocations from the listener
    while time.monotonic() < deadline:
        revoked = [client.get(f"{V1}/prices", params=params, headers=h) for h in (key_headers, bearer)]
        if all(r.status_code == 401 for r in revoked):
            break
        time.sleep(0.05)
    assert [r.json()["code"] for r in revoked] == ["invalid_api_key", "token_revoked"]


def test_exhausted_bucket_gets_429_with_retry_after(client):
    from serving_api import cli

    key = cli.create_api_key(client.app.state.api.database_url, "org_a", "tight", "viewer", rate_limit_per_minute=3)
    headers = {"X-API-Key": key}
    params = {**_day(1), "zone": "PJM"}
    fast_before = _fast_hits(client)
    errors_before = _sample(client, "optibid_api_errors_total", route="/api/v1/prices", status="429")
    answers = [client.get(f"{V1}/prices", params=params, headers=headers) for _ in range(4)]
    assert [(r.status_code, r.headers.get("x-cache")) for r in answers] == [
        (200, "miss"),
        (200, "hit"),
        (200, "hit"),
        (429, None),
    ]
    assert _fast_hits(client) == fast_before + 2  # both hits by the fast path, each charged once
    limited = answers[-1]
    assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["details"] == {"retry_after": int(limited.headers["retry-after"])}
    assert _sample(client, "optibid_api_errors_total", route="/api/v1/prices", status="429") == errors_before + 1


def test_rate_limit_is_shared_by_apps_on_one_home(client, full_path_client):
    """Two apps (like two uvicorn workers) draw on one bucket per credential."""
    from serving_api import cli

    key = cli.create_api_key(client.app.state.api.database_url, "org_a", "shared", "viewer", rate_limit_per_minute=4)
    headers = {"X-API-Key": key}
    statuses = [c.get(f"{V1}/zones", headers=headers).status_code for c in (client, full_path_client) * 3]
    assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.fixture(scope="module")
def pipeline(database_url, settings, tmp_path_factory):
    """(warehouse URL, API client) on a warehouse whose gold comes from Dagster materializations."""
    from tests.gold.pipeline import pipeline_api, pipeline_warehouse

    url = pipeline_warehouse(database_url)
    with pipeline_api(settings, url, tmp_path_factory.mktemp("pipeline_home")) as client:
        yield url, client


def test_invalidated_partition_is_not_served(pipeline):
    """A fast-path hit stops once a gold partition run rewrites the day: the route answers the new value."""
    from tests.gold.pipeline import PRICE_MODELS, bearer, correct_pjm_price, day_window, materialize_gold

    url, client = pipeline
    params = {**day_window(), "zone": "PJM", "fields": "ts_utc,price_avg", "limit": 24}
    headers = bearer(client, "acme", "analyst")
    client.get(f"{V1}/prices", params=params, headers=headers)
    fast_before = _fast_hits(client)
    before = client.get(f"{V1}/prices", params=params, headers=headers)
    assert before.headers["x-cache"] == "hit" and _fast_hits(client) == fast_before + 1
    corrected = correct_pjm_price(url, 6, -5.0)

    assert materialize_gold(url, PRICE_MODELS).success
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the bump reaches the app through its listener
        after = client.get(f"{V1}/prices", params=params, headers=headers)
        if after.headers["x-cache"] != "hit":
            break
        time.sleep(0.05)
    assert after.headers["x-cache"] == "miss"
    served = {datetime.fromisoformat(r["ts_utc"]): r["price_avg"] for r in after.json()["data"]}
    assert served[corrected] == -5.0
    assert client.get(f"{V1}/prices", params=params, headers=headers).headers["x-cache"] == "hit"
