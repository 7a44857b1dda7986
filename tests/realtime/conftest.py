"""Real-time KPI fixtures: a private warehouse with reference data and dbt-built gold, the real API served by
uvicorn, and the real follow-mode consumer (`python -m ingestion.cdc.cli --follow`) as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Correct-Horse-Battery-9"
ORG = "acme"


@pytest.fixture(scope="session")
def database_url(database_url: str) -> Iterator[str]:
    """This area's own database: gold is exactly what dbt builds (see tests.conftest.private_database)."""
    from tests.conftest import private_database

    yield from private_database(database_url, "optibid_test_realtime")


@pytest.fixture(scope="session")
def dbt_target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dbt_target_realtime")


@pytest.fixture(scope="session")
def warehouse(database_url: str, dbt_target_dir: Path) -> str:
    """Reference data, the dbt seeds and every gold model up to `kpi_values` (on empty market data)."""
    from infra import db
    from infra.dbt import run_dbt
    from ingestion.reference import seed_reference_data
    from serving_api import cli

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    run_dbt(["seed"], database_url=database_url, target_path=dbt_target_dir)
    run_dbt(["run", "--select", "+kpi_values"], database_url=database_url, target_path=dbt_target_dir)
    cli.create_user(database_url, ORG, f"viewer-{uuid.uuid4().hex[:6]}@{ORG}.test", "viewer", PASSWORD)
    return database_url


@pytest.fixture(scope="session")
def api_url(settings, warehouse: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (create_app, as tests/api does) served by uvicorn on a free port; its base URL."""
    import uvicorn

    from infra.processes import free_port
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    api_settings = settings.model_copy(
        update={"database_url": warehouse, "home": tmp_path_factory.mktemp("rt_api_home"), "clickhouse_url": None}
    )
    app = create_app(api_settings, ApiOptions(ws_heartbeat_seconds=1.0, user_rate_limit_per_minute=1_000_000))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def access_token(api_url: str, warehouse: str) -> str:
    import httpx

    from infra import db

    with db.connect(warehouse) as conn:
        email = conn.execute(
            "SELECT email FROM ops.users WHERE org_id = %s AND email LIKE 'viewer-%%' LIMIT 1", (ORG,)
        ).fetchone()[0]
    resp = httpx.post(f"http://{api_url}/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def start_follow_consumer(bootstrap: str, lake_root: str, topic: str, database_url: str) -> subprocess.Popen:
    """`optibid ingest cdc --follow` on one topic, writing the real-time KPIs into `database_url`."""
    env = {**os.environ, "OPTIBID_DATABASE_URL": database_url}
    return subprocess.Popen(
        [sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
         "--lake", lake_root, "--batch-seconds", "0.5", "--follow"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def stop_follow_consumer(proc: subprocess.Popen) -> str:
    """SIGTERM (the batch in hand is committed), then its stderr; fails the test if it had crashed."""
    crashed = proc.poll() is not None
    if not crashed:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    text = err.decode(errors="replace")
    assert not crashed and proc.returncode == 0, f"follow consumer failed ({proc.returncode}):\n{text[-3000:]}"
    return text
