"""The platform's processes as `optibid demo` runs them: a shared code server, the Dagster webserver and
daemon, the API, the follow-mode CDC consumer and a Spark Connect server come up, a dead daemon is
restarted, and `stop` leaves no process behind. The children get a private home and database so their
sensors touch nothing of other tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.platform import STOP_ORDER, TOOL_PROCESSES, PlatformProcesses
from infra.processes import free_port

REPO = Path(__file__).resolve().parents[2]
SPARK_COUNT = (
    "import sys; from infra.spark import spark_session; print(spark_session(remote=sys.argv[1]).range(5).count())"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# The platform's services as separate processes (Dagster webserver and daemon, the API, Spark Connect, the follow
# consumer): over a minute of two cores, so with the other multi-process paths in `make test-scale`.
@pytest.mark.scale
def test_platform_processes_start_restart_and_stop(database_url: str, broker_bootstrap: str, tmp_path: Path) -> None:
    from infra.settings import Settings
    from tests.conftest import private_database

    home = tmp_path / "home"
    for url in private_database(database_url, "optibid_test_platform"):
        settings = Settings(home=home, database_url=url)
        from infra.dagster_instance import write_dagster_home

        dagster_home = write_dagster_home(settings)
        env = {
            **os.environ,
            "OPTIBID_HOME": str(home),
            "OPTIBID_DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": broker_bootstrap,
            "DAGSTER_HOME": str(dagster_home),
        }
        platform = PlatformProcesses(
            env=env,
            dagster_home=dagster_home,
            log_dir=tmp_path / "logs",
            dagster_port=free_port(),
            api_port=free_port(),
            cwd=REPO,
        )
        with platform:
            platform.wait_until_serving(timeout=240)
            assert httpx.get(f"{platform.api_url}/healthz", timeout=5).status_code == 200
            locations = httpx.post(
                f"{platform.dagster_url}/graphql",
                json={"query": "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"},
                timeout=30,
            ).json()["data"]["workspaceOrError"]["locationEntries"]
            assert [entry["name"] for entry in locations] == ["optibid"]
            # The tools (landing page, MLflow UI) are the browser tests' (test_tools_in_browser.py).
            assert set(platform.processes) == set(STOP_ORDER) - set(TOOL_PROCESSES)
            assert not platform.dead()
            # The runs' Spark: a session on the platform's Connect server, from a process of its own (this
            # one holds the suite's local SparkSession).
            count = subprocess.run(
                [sys.executable, "-c", SPARK_COUNT, platform.spark_remote],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout.split()[-1]
            assert count == "5"

            daemon = platform.processes["daemon"]
            os.killpg(daemon.popen.pid, signal.SIGKILL)
            daemon.popen.wait(timeout=10)
            assert platform.dead() == ["daemon"]
            platform.restart("daemon")
            assert daemon.running and daemon.restarts == 1
            pids = [p.popen.pid for p in platform.processes.values()]
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in pids if _alive(pid)], "a platform process outlived stop()"
        # The follow-mode consumer stopped cleanly: it prints its summary on SIGINT.
        assert '"events_read"' in platform.processes["cdc_follow"].log_path.read_text()
