"""GET /api/v1/alerts through the real app on the real database: scoped to the caller's organization (plus
platform alerts) by row-level security, filtered and paged, with 422 naming a bad parameter."""

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from infra import alerts, db

PASSWORD = "Correct-Horse-Battery-9"
RUN = uuid.uuid4().hex[:8]
ORG_A, ORG_B = f"alerts_a_{RUN}", f"alerts_b_{RUN}"


@pytest.fixture(scope="module")
def client(settings, database_url, tmp_path_factory) -> Iterator[TestClient]:
    from serving_api import cli
    from serving_api.app import create_app

    with db.connect(database_url) as conn:
        for org in (ORG_A, ORG_B):
            conn.execute("INSERT INTO silver.ref__organizations VALUES (%s, %s, 'US')", (org, org.upper()))
        for org in (ORG_A, ORG_B):
            alerts.raise_alert(
                conn, kind="run_failure", dedup_key=f"test:{RUN}:{org}", title=f"Run failed for {org}", org_id=org
            )
        alerts.raise_alert(
            conn, kind="freshness", dedup_key=f"test:{RUN}:platform", title="gold/x is stale", severity="warning"
        )
        alerts.raise_alert(conn, kind="drift", dedup_key=f"test:{RUN}:resolved", title="drift", severity="warning")
        alerts.resolve_alert(conn, f"test:{RUN}:resolved", {"reason": "below threshold"})
    for org in (ORG_A, ORG_B):
        cli.create_user(database_url, org, f"viewer@{org}.test", "viewer", PASSWORD)
        cli.create_user(database_url, org, f"analyst@{org}.test", "analyst", PASSWORD)
    app_settings = settings.model_copy(
        update={"database_url": database_url, "home": tmp_path_factory.mktemp("alerts_api_home")}
    )
    with TestClient(create_app(app_settings)) as c:
        yield c


def _headers(client: TestClient, email: str) -> dict[str, str]:
    resp = client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _mine(page: dict) -> list[str]:
    return sorted(a["dedup_key"] for a in page["data"] if a["dedup_key"].startswith(f"test:{RUN}:"))


def test_an_organization_sees_its_alerts_and_platform_alerts_only(client):
    headers = _headers(client, f"analyst@{ORG_A}.test")
    resp = client.get("/api/v1/alerts", headers=headers, params={"limit": 500})
    assert resp.status_code == 200, resp.text
    assert _mine(resp.json()) == [f"test:{RUN}:{ORG_A}", f"test:{RUN}:platform"]
    assert all(a["org_id"] in (None, ORG_A) for a in resp.json()["data"])

    every = client.get("/api/v1/alerts", headers=headers, params={"status": "all", "limit": 500}).json()
    assert _mine(every) == [f"test:{RUN}:{ORG_A}", f"test:{RUN}:platform", f"test:{RUN}:resolved"]
    resolved = client.get("/api/v1/alerts", headers=headers, params={"status": "resolved", "kind": "drift"}).json()
    [drift] = [a for a in resolved["data"] if a["dedup_key"] == f"test:{RUN}:resolved"]
    assert drift["status"] == "resolved" and drift["resolution"] == {"reason": "below threshold"}

    other = client.get("/api/v1/alerts", headers=_headers(client, f"analyst@{ORG_B}.test"), params={"limit": 500})
    assert _mine(other.json()) == [f"test:{RUN}:{ORG_B}", f"test:{RUN}:platform"]


def test_pages_follow_the_cursor(client):
    headers = _headers(client, f"analyst@{ORG_A}.test")
    seen, cursor = [], None
    for _ in range(50):
        params = {"status": "all", "limit": 1, "since": "2000-01-01T00:00:00Z"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/alerts", headers=headers, params=params).json()
        seen += [a["alert_id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"status": "closed"}, "status"),
        ({"kind": "weather"}, "kind"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(client, params, field):
    resp = client.get("/api/v1/alerts", headers=_headers(client, f"analyst@{ORG_A}.test"), params=params)
    assert resp.status_code == 422, resp.text
    assert any(field in err["loc"] for err in resp.json()["details"])


def test_roles_without_org_read_are_refused(client):
    resp = client.get("/api/v1/alerts", headers=_headers(client, f"viewer@{ORG_A}.test"))
    assert resp.status_code == 403
    assert client.get("/api/v1/alerts").status_code == 401


@pytest.mark.parametrize(
    ("params", "status"),
    [({"cursor": "bm90LWEtY3Vyc29y"}, 400), ({"since": "9999-12-31T23:59:59-14:00"}, 422)],
)
def test_tampered_cursor_and_out_of_range_since_are_client_errors(client, params, status):
    resp = client.get("/api/v1/alerts", headers=_headers(client, f"analyst@{ORG_A}.test"), params=params)
    assert resp.status_code == status, resp.text
