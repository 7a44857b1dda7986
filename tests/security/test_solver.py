"""Unrestricted resource consumption (OWASP API4), optimization: a solve that overruns its wall-clock limit
is stopped for real (its solver process killed), answered 503 with the limit, and the next solve works."""

from __future__ import annotations

import os
import time

from fastapi.testclient import TestClient

from tests.security.conftest import PROXY, V1, make_app
from tests.security.test_bounds import _bids, _storage


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child not yet reaped is a zombie: dead for our purpose.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_overrunning_solve_is_killed_and_answered_503(security_settings, tokens):
    settings = security_settings.model_copy(update={"api_solver_processes": 1})
    # The heavy solve below takes 0.25 s on an idle machine and longer on a busy one, so 0.1 s always
    # overruns; the 24-hour storage solves take milliseconds.
    with TestClient(make_app(settings, optimize_timeout_s=0.1), client=PROXY) as client:
        headers = {"Authorization": f"Bearer {tokens('org_a', 'trader')['access_token']}"}
        warm = client.post(f"{V1}/optimize/storage", json=_storage(24), headers=headers)
        assert warm.status_code == 200, warm.text
        solver = client.app.state.api.solver
        (worker,) = solver._all
        pid = worker.process.pid
        assert pid != os.getpid()

        heavy = _bids(168, renewables=49, storage=True, quantiles=20)
        heavy["time_limit_s"] = 10
        started = time.perf_counter()
        resp = client.post(f"{V1}/optimize/bids", json=heavy, headers=headers)
        elapsed = time.perf_counter() - started
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["code"] == "solver_timeout" and body["details"]["limit_s"] == 0.1
        assert elapsed < 5.0
        assert solver.killed == 1
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)  # the work stopped: the process that ran it is gone

        again = client.post(f"{V1}/optimize/storage", json=_storage(24), headers=headers)
        assert again.status_code == 200, again.text
        (replacement,) = solver._all
        assert replacement.process.pid != pid
