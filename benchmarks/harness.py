"""What several benchmarks (and the real-time tests) need around the code they measure: the load average
printed beside every figure, stopping whatever a benchmark started (also when it fails), an API server run
as deployed, waiting for it to serve, and a KPI WebSocket subscriber. Nothing here is measured itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as printed beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


@contextmanager
def stopping_started_services(settings=None) -> Iterator[None]:
    """Run the block; then stop every embedded service (broker, Postgres, ClickHouse) of the home that was not
    running before it, whether the block finished or raised. Services that were already up are left alone."""
    from infra.services import running_embedded_services, stop_embedded_services
    from infra.settings import get_settings

    settings = settings or get_settings()
    before = running_embedded_services(settings)
    try:
        yield
    finally:
        stopped = stop_embedded_services(settings, running_embedded_services(settings) - before)
        if stopped:
            print(f"stopped the embedded {', '.join(stopped)} this benchmark started")


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL when `proc` has not exited within `timeout_s`; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_server(database_url: str, port: int, workers: int) -> subprocess.Popen:
    """The API as infra/deploy runs it (uvicorn, uvloop, httptools, no access log), on its own home."""
    env = {
        **os.environ,
        "OPTIBID_DATABASE_URL": database_url,
        "OPTIBID_HOME": tempfile.mkdtemp(prefix="bench_api_"),
        "OPTIBID_JWT_SECRET": "bench-" + "x" * 40,
    }
    command = ["uvicorn", "serving_api.app:app", "--port", str(port), "--workers", str(workers)]
    command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen([sys.executable, "-m", *command], env=env, cwd=REPO_ROOT)


def wait_until_ready(base_url: str, timeout_s: float = 60.0) -> None:
    """Return once `GET /readyz` answers 200; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} was not ready within {timeout_s:.0f} s")


def listen_kpi_values(
    ws_url: str,
    stop: threading.Event,
    ready: threading.Barrier,
    on_value: Callable[[str, float], None],
) -> None:
    """Subscribe to a KPI WebSocket and call `on_value(period_start, value)` for every value pushed, until
    `stop` is set. Waits at `ready` once subscribed, so producers start only when every listener is."""
    from websockets.sync.client import connect

    with connect(ws_url, max_size=None) as ws:
        ready.wait()
        while not stop.is_set():
            try:
                message = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            if message["type"] == "kpi_values":
                for value in message["values"]:
                    on_value(value["period_start"], value["value"])
