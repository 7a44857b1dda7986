"""Similar past optimization runs: the input embedding, `GET /optimization/runs/{id}/similar` through the real
app on the embedded Postgres (pgvector), the exact-scan fallback on the system PostgreSQL without pgvector,
tenancy, and the warm start of an on-demand unit commitment from its nearest run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from infra import db
from ingestion.reference import seed_reference_data
from ml.optimization import (
    EMBEDDING_DIM,
    SolveOptions,
    StorageDispatchInput,
    UnitCommitmentInput,
    commitment_warm_start,
    cosine_distance,
    run_embedding,
    run_record,
    solve,
    solve_unit_commitment,
)
from ml.optimization.warehouse import insert_runs

PASSWORD = "Similar-Horse-Battery-3"
PREFIX = "/api/v1"
USERS = {("acme", "trader"), ("voltindia", "trader")}
SYSTEM_POSTGRES = os.environ.get("OPTIBID_TEST_SYSTEM_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


def _uc(load: list[float], reserve: float = 0.1) -> dict:
    return {
        "load_forecast_mw": load,
        "reserve_fraction": reserve,
        "units": [
            {"unit_id": "a", "min_output_mw": 40, "max_output_mw": 150, "marginal_cost": 20, "startup_cost": 400},
            {"unit_id": "b", "min_output_mw": 20, "max_output_mw": 120, "marginal_cost": 45, "startup_cost": 100},
            {"unit_id": "c", "min_output_mw": 10, "max_output_mw": 60, "marginal_cost": 80, "startup_cost": 50},
        ],
    }


def _storage(prices: list[float]) -> dict:
    return {"asset": {"asset_id": "bess-sim", "power_mw": 5, "energy_mwh": 10}, "price_forecast": prices}


EVENING_PEAK = [100, 120, 160, 220, 250, 180, 130, 110]
MORNING_PEAK = [230, 250, 190, 140, 110, 100, 105, 120]


def test_embedding_is_fixed_length_and_compares_shape_then_size() -> None:
    small = StorageDispatchInput.model_validate(_storage([10, 20, 60, 30]))
    scaled = StorageDispatchInput.model_validate(_storage([20, 40, 120, 60]))  # same shape, twice the level
    finer = StorageDispatchInput.model_validate(
        _storage(list(np.interp(np.linspace(0, 3, 48), range(4), [10, 20, 60, 30])))
    )
    opposite = StorageDispatchInput.model_validate(_storage([60, 30, 10, 20]))
    vectors = {name: run_embedding(inp) for name, inp in (("s", small), ("x2", scaled), ("f", finer), ("o", opposite))}
    assert {len(v) for v in vectors.values()} == {EMBEDDING_DIM}
    assert cosine_distance(vectors["s"], vectors["s"]) == pytest.approx(0.0, abs=1e-12)
    # Same shape at another level or resolution is nearer than another shape at the same level.
    assert cosine_distance(vectors["s"], vectors["x2"]) < cosine_distance(vectors["s"], vectors["o"])
    assert cosine_distance(vectors["s"], vectors["f"]) < cosine_distance(vectors["s"], vectors["o"])
    uc = run_embedding(UnitCommitmentInput.model_validate(_uc(EVENING_PEAK)))
    assert len(uc) == EMBEDDING_DIM and all(np.isfinite(uc))


def test_warm_start_from_a_neighbour_keeps_the_optimum() -> None:
    near = UnitCommitmentInput.model_validate(_uc([x * 1.01 for x in EVENING_PEAK]))
    base = solve_unit_commitment(UnitCommitmentInput.model_validate(_uc(EVENING_PEAK)))
    cold = solve_unit_commitment(near)
    commitment = commitment_warm_start(near, base.model_dump(mode="json"))
    assert set(commitment) == {"a", "b", "c"} and {len(v) for v in commitment.values()} == {len(EVENING_PEAK)}
    warm = solve_unit_commitment(near, SolveOptions(warm_start_commitment=commitment))
    assert warm.info.warm_start and not cold.info.warm_start
    assert warm.info.status == "optimal"
    assert warm.total_cost == pytest.approx(cold.total_cost, rel=1e-3)
    # A schedule that cannot serve this load (everything off) is repaired before it is handed over (the
    # cheapest units switched on until load + reserve is covered); the solve stays optimal either way.
    off = {uid: [0] * len(EVENING_PEAK) for uid in commitment}
    hinted = solve_unit_commitment(near, SolveOptions(warm_start_commitment=off))
    assert hinted.info.warm_start and hinted.total_cost == pytest.approx(cold.total_cost, rel=1e-3)


def _email(org: str, role: str) -> str:
    return f"{role}@{org}.similar.test"


@pytest.fixture(scope="module")
def client(database_url: str, settings, tmp_path_factory) -> Iterator[TestClient]:
    from serving_api import cli
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
        taken = {r[0] for r in conn.execute("SELECT email FROM ops.users WHERE email LIKE '%%.similar.test'")}
    for org, role in USERS:
        if _email(org, role) not in taken:
            cli.create_user(database_url, org, _email(org, role), role, PASSWORD)
    app_settings = settings.model_copy(
        update={"database_url": database_url, "home": tmp_path_factory.mktemp("similar_api_home")}
    )
    app = create_app(app_settings, ApiOptions(user_rate_limit_per_minute=100_000, login_max_failures_per_ip=10_000))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient):
    tokens: dict[str, str] = {}

    def headers(org: str = "acme") -> dict[str, str]:
        if org not in tokens:
            resp = client.post(f"{PREFIX}/auth/token", data={"username": _email(org, "trader"), "password": PASSWORD})
            assert resp.status_code == 200, resp.text
            tokens[org] = resp.json()["access_token"]
        return {"Authorization": f"Bearer {tokens[org]}"}

    return headers


def _solve(client: TestClient, headers: dict, path: str, inp: dict) -> dict:
    resp = client.post(f"{PREFIX}/optimize/{path}", json={"input": inp, "time_limit_s": 5}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def runs(client: TestClient, auth) -> dict[str, str]:
    """Runs of two organizations: acme has an evening-peak and a morning-peak day; voltindia an evening one."""
    return {
        "acme_evening": _solve(client, auth("acme"), "unit-commitment", _uc(EVENING_PEAK))["run_id"],
        "acme_morning": _solve(client, auth("acme"), "unit-commitment", _uc(MORNING_PEAK))["run_id"],
        "acme_storage": _solve(client, auth("acme"), "storage", _storage([30, 20, 15, 40, 90, 70]))["run_id"],
        "volt_evening": _solve(client, auth("voltindia"), "unit-commitment", _uc(EVENING_PEAK))["run_id"],
    }


def test_similar_runs_are_the_callers_own_nearest_first(client, auth, runs, database_url: str) -> None:
    query = _solve(client, auth("acme"), "unit-commitment", _uc([x * 1.02 for x in EVENING_PEAK]))
    resp = client.get(f"{PREFIX}/optimization/runs/{query['run_id']}/similar", params={"k": 10}, headers=auth("acme"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["search"] == "pgvector" and body["problem"] == "unit_commitment" and body["embedding_dim"] == 32
    ids = [n["run_id"] for n in body["neighbours"]]
    # Only acme's unit commitments (never voltindia's identical day, never the storage run), nearest first.
    assert runs["volt_evening"] not in ids and runs["acme_storage"] not in ids and query["run_id"] not in ids
    assert ids.index(runs["acme_evening"]) < ids.index(runs["acme_morning"])
    distances = [n["distance"] for n in body["neighbours"]]
    assert distances == sorted(distances) and distances[0] < 0.01
    # The on-demand solve was warm-started from its nearest run, and says so in the stored options.
    with db.connect(database_url) as conn:
        options, outputs = conn.execute(
            "SELECT options, outputs FROM ml.optimization_runs WHERE run_id = %s", (query["run_id"],)
        ).fetchone()
    assert options["warm_start_commitment"] and outputs["info"]["warm_start"] is True


def test_another_organizations_run_is_not_found(client, auth, runs) -> None:
    resp = client.get(f"{PREFIX}/optimization/runs/{runs['acme_evening']}/similar", headers=auth("voltindia"))
    assert resp.status_code == 404 and resp.json()["details"] == {"field": "run_id"}
    theirs = client.get(f"{PREFIX}/optimization/runs/{runs['volt_evening']}/similar", headers=auth("voltindia"))
    assert theirs.status_code == 200
    assert runs["acme_evening"] not in [n["run_id"] for n in theirs.json()["neighbours"]]
    bad_k = client.get(f"{PREFIX}/optimization/runs/{runs['acme_evening']}/similar", params={"k": 0}, headers=auth())
    assert bad_k.status_code == 422


@pytest.fixture(scope="module")
def system_postgres() -> Iterator[str]:
    """A fresh database on the system PostgreSQL 15 (no pgvector there); skipped when it is not running."""
    try:
        with psycopg.connect(SYSTEM_POSTGRES, connect_timeout=3):
            pass
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL at {SYSTEM_POSTGRES}")
    url = db.create_database(SYSTEM_POSTGRES, "optibid_test_similar_exact", drop_existing=True)
    db.migrate(url)
    yield url
    db.drop_database(SYSTEM_POSTGRES, "optibid_test_similar_exact")


def test_without_pgvector_the_search_is_an_exact_scan(system_postgres: str) -> None:
    from serving_api import similarity
    from serving_api.org_scope import set_org_scope

    loads = {"evening": EVENING_PEAK, "morning": MORNING_PEAK, "flat": [150.0] * 8}
    records = []
    for org in ("acme", "voltindia"):
        for name, load in loads.items():
            inp = UnitCommitmentInput.model_validate(_uc(load))
            records.append(run_record(inp, solve(inp), org_id=org, run_id=f"{org}-{name}"))
    with db.connect(system_postgres) as conn:
        insert_runs(conn, records)
    query = run_embedding(UnitCommitmentInput.model_validate(_uc([x * 1.02 for x in EVENING_PEAK])))

    async def search(org: str) -> tuple[str, list]:
        async with await psycopg.AsyncConnection.connect(system_postgres) as conn, conn.transaction():
            await set_org_scope(conn, org)
            return await similarity.nearest_runs(conn, "unit_commitment", query, 3)

    method, found = asyncio.run(search("acme"))
    assert method == "exact_scan"
    assert found[0].run_id == "acme-evening"
    assert {n.run_id for n in found} == {"acme-evening", "acme-morning", "acme-flat"}
    expected = sorted(
        cosine_distance(query, run_embedding(UnitCommitmentInput.model_validate(_uc(load)))) for load in loads.values()
    )
    assert [n.distance for n in found] == pytest.approx(expected)
