"""POST /optimize/* through the real API app (auth, org-scoped RLS connection, error handlers): good requests
solve and store a run for the caller's org; each class of bad input is a 4xx whose message names the field."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from infra.db import connect
from ingestion.reference import seed_reference_data

PASSWORD = "Optimize-Horse-Battery-7"
USERS = {("acme", "trader"), ("acme", "viewer"), ("voltindia", "analyst")}
PREFIX = "/api/v1"

STORAGE = {
    "asset": {"asset_id": "bess-api", "power_mw": 5, "energy_mwh": 10, "round_trip_efficiency": 0.9},
    "price_forecast": [30, 20, 15, 40, 90, 70],
    "start": "2024-03-01T00:00:00Z",
}
BIDS = {
    "zone": "PJM",
    "delivery_start": "2024-03-01T00:00:00Z",
    "price_quantiles": [{"level": 0.1, "prices": [20, 30, 60]}, {"level": 0.9, "prices": [40, 55, 110]}],
    "renewables": [{"asset_id": "wind-api", "forecast_mw": [10, 12, 8]}],
    "thermal": [{"unit_id": "gt-api", "min_output_mw": 10, "max_output_mw": 40, "marginal_cost": 42}],
}
UC = {
    "load_forecast_mw": [100, 160, 220, 130],
    "reserve_fraction": 0.1,
    "units": [
        {"unit_id": "a", "min_output_mw": 40, "max_output_mw": 150, "marginal_cost": 20, "startup_cost": 400},
        {"unit_id": "b", "min_output_mw": 20, "max_output_mw": 120, "marginal_cost": 45, "startup_cost": 100},
    ],
}


def _email(org: str, role: str) -> str:
    return f"{role}@{org}.optimize.test"


@pytest.fixture(scope="module")
def client(database_url: str, settings, tmp_path_factory) -> Iterator[TestClient]:
    from serving_api import cli
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    with connect(database_url) as conn:
        seed_reference_data(conn)
        taken = {
            r[0] for r in conn.execute("SELECT email FROM ops.users WHERE email LIKE '%%.optimize.test'")
        }
    for org, role in USERS:
        if _email(org, role) not in taken:
            cli.create_user(database_url, org, _email(org, role), role, PASSWORD)
    app_settings = settings.model_copy(
        update={"database_url": database_url, "home": tmp_path_factory.mktemp("optimize_api_home")}
    )
    app = create_app(
        app_settings, ApiOptions(user_rate_limit_per_minute=100_000, login_max_failures_per_ip=10_000)
    )
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient):
    tokens: dict[tuple[str, str], str] = {}

    def headers(org: str = "acme", role: str = "trader") -> dict[str, str]:
        if (org, role) not in tokens:
            resp = client.post(
                f"{PREFIX}/auth/token", data={"username": _email(org, role), "password": PASSWORD}
            )
            assert resp.status_code == 200, resp.text
            tokens[(org, role)] = resp.json()["access_token"]
        return {"Authorization": f"Bearer {tokens[(org, role)]}"}

    return headers


def _post(client: TestClient, headers: dict, path: str, inp: dict, **extra) -> tuple[int, dict]:
    resp = client.post(f"{PREFIX}/optimize/{path}", json={"input": inp, **extra}, headers=headers)
    return resp.status_code, resp.json()


def _stored_run(database_url: str, run_id: str) -> tuple | None:
    with connect(database_url) as conn:
        return conn.execute(
            "SELECT org_id, problem, status, objective FROM ml.optimization_runs WHERE run_id = %s", (run_id,)
        ).fetchone()


def test_storage_solves_and_stores_run_for_callers_org(client, auth, database_url: str) -> None:
    status, body = _post(client, auth(), "storage", STORAGE, time_limit_s=5)
    assert status == 200, body
    assert body["problem"] == "storage_dispatch" and body["status"] == "optimal"
    assert body["objective"] > 0 and len(body["outputs"]["intervals"]) == 6
    assert len(body["explanations"]) == 6 and "charged" in " ".join(body["explanations"])
    assert _stored_run(database_url, body["run_id"]) == (
        "acme",
        "storage_dispatch",
        "optimal",
        body["objective"],
    )
    # Row-level security: the run is the caller's organization's, invisible to another organization.
    params = {"run_id": body["run_id"]}
    mine = client.get(f"{PREFIX}/optimization/runs", params=params, headers=auth("acme", "trader"))
    theirs = client.get(f"{PREFIX}/optimization/runs", params=params, headers=auth("voltindia", "analyst"))
    assert mine.status_code == 200 and len(mine.json()["data"]) == 1
    assert theirs.status_code == 200 and theirs.json()["data"] == []


def test_bids_and_unit_commitment_solve(client, auth) -> None:
    status, body = _post(client, auth(), "bids", BIDS)
    assert status == 200, body
    assert {c["asset_id"] for c in body["outputs"]["curves"]} == {"wind-api", "gt-api"}
    assert "PJM rules" in body["explanations"][0]
    status, body = _post(client, auth(), "unit-commitment", UC)
    assert status == 200, body
    assert body["problem"] == "unit_commitment" and body["status"] == "optimal"
    assert len(body["explanations"]) == 4 and "marginal price" in body["explanations"][2]


def test_grid_switching_is_a_deprecated_alias_of_unit_commitment(client, auth) -> None:
    status, body = _post(client, auth(), "grid-switching", UC)
    assert status == 200, body
    assert body["problem"] == "unit_commitment" and body["status"] == "optimal"
    paths = client.app.openapi()["paths"]
    assert paths[f"{PREFIX}/optimize/grid-switching"]["post"]["deprecated"] is True
    assert not paths[f"{PREFIX}/optimize/unit-commitment"]["post"].get("deprecated", False)


def _field_error(body: dict) -> str:
    """Location and message of every validation error, as one string to search."""
    assert body["code"] == "validation_error", body
    return " | ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in body["details"])


@pytest.mark.parametrize(
    ("path", "inp", "extra", "expected"),
    [
        ("storage", STORAGE | {"asset": STORAGE["asset"] | {"power_mw": -5}}, {}, "input.asset.power_mw"),
        ("storage", STORAGE | {"asset": STORAGE["asset"] | {"min_soc": 0.8, "max_soc": 0.2}}, {}, "min_soc"),
        ("storage", STORAGE | {"horizon_hours": 24}, {}, "horizon mismatch"),
        (
            "storage",
            STORAGE | {"asset": STORAGE["asset"] | {"terminal_soc_min": 1.0}, "price_forecast": [1]},
            {},
            "terminal_soc_min",
        ),
        ("storage", STORAGE, {"time_limit_s": 60}, "time_limit_s"),
        ("bids", BIDS | {"zone": "ATLANTIS"}, {}, "zone"),
        ("bids", BIDS | {"renewables": [{"asset_id": "w", "forecast_mw": [1, 2]}]}, {}, "horizon mismatch"),
        ("unit-commitment", UC | {"horizon_hours": 24}, {}, "horizon mismatch"),
        ("storage", STORAGE | {"price_forecast": [30, 20, 1e300, 40, 90, 70]}, {}, "input.price_forecast.2"),
        (
            "unit-commitment",
            UC | {"units": [UC["units"][0] | {"unit_id": f"u{i}"} for i in range(51)]},
            {},
            "at most 50",
        ),
        ("unit-commitment", UC | {"units": [UC["units"][0] | {"max_output_mw": -1}]}, {}, "max_output_mw"),
    ],
    ids=[
        "negative-capacity",
        "inverted-soc",
        "horizon",
        "unreachable-soc",
        "time-limit",
        "zone",
        "bid-horizon",
        "uc-horizon",
        "huge-value",
        "too-many-units",
        "uc-negative-capacity",
    ],
)
def test_bad_input_is_422_naming_the_field(client, auth, path, inp, extra, expected) -> None:
    status, body = _post(client, auth(), path, inp, **extra)
    assert status == 422
    assert expected in _field_error(body)


def test_infeasible_demand_is_422_naming_load_and_stored(client, auth, database_url: str) -> None:
    status, body = _post(client, auth(), "unit-commitment", UC | {"load_forecast_mw": [100, 400, 220, 130]})
    assert status == 422
    assert body["code"] == "infeasible" and body["message"].startswith("load_forecast_mw")
    assert any("capacity 270.0 MW < load 400.0" in e for e in body["details"]["explanations"])
    assert _stored_run(database_url, body["details"]["run_id"])[:3] == (
        "acme",
        "unit_commitment",
        "infeasible",
    )


def test_role_without_optimize_permission_is_403(client, auth) -> None:
    status, body = _post(client, auth("acme", "viewer"), "storage", STORAGE)
    assert status == 403 and "optimize:write" in body["message"]
