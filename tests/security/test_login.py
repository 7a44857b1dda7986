"""Broken authentication (OWASP API2): failed logins cannot be turned into a lockout of other users, the
client address is taken from X-Forwarded-For only behind a trusted proxy, and password hashing does not
stall the event loop."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

from fastapi.testclient import TestClient

from tests.api.conftest import PASSWORD
from tests.security.conftest import login, make_app


def test_random_email_flood_from_one_address_does_not_lock_out_its_users(client):
    attacker = "203.0.113.7"
    for _ in range(52):  # past login_max_failures_per_ip (50)
        assert login(client, f"{uuid.uuid4().hex}@nowhere.test", "Wrong-Password-1", attacker).status_code == 401
    started = time.perf_counter()
    resp = login(client, "viewer@org_a.test", PASSWORD, attacker)  # a colleague behind the same address
    assert resp.status_code == 200, resp.text
    assert time.perf_counter() - started < 10.0  # delayed by at most login_delay_max_seconds (4 s)


def test_failures_against_a_known_user_do_not_refuse_the_right_password_elsewhere(client):
    attacker, owner = "203.0.113.8", "198.51.100.9"
    for _ in range(8):
        login(client, "analyst@org_b.test", "Wrong-Password-1", attacker)
    refused = login(client, "analyst@org_b.test", PASSWORD, attacker)
    # The attacker's own (e-mail, address) pair backs off, briefly...
    assert refused.status_code == 429 and refused.json()["code"] == "login_backoff"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # ...while the owner, from their address, gets in with the right password after a bounded delay.
    started = time.perf_counter()
    resp = login(client, "analyst@org_b.test", PASSWORD, owner)
    assert resp.status_code == 200, resp.text
    assert time.perf_counter() - started < 10.0


def test_forwarded_for_from_an_untrusted_peer_is_ignored(security_settings):
    from infra import db

    app = make_app(security_settings.model_copy(update={"trusted_proxies": []}))
    spoofed = f"192.0.2.{uuid.uuid4().int % 200 + 1}"
    with TestClient(app, client=("127.0.0.1", 50001)) as c:
        login(c, "nobody@org_a.test", "Wrong-Password-1", spoofed)
    with db.connect(security_settings.database_url) as conn:
        ips = [r[0] for r in conn.execute("SELECT client_ip FROM ops.login_attempts WHERE email = 'nobody@org_a.test'")]
    assert spoofed not in ips and "127.0.0.1" in ips


def test_password_hashing_does_not_block_the_event_loop(client):
    import asyncio

    async def loop_gaps(seconds: float) -> list[float]:
        gaps, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before - 0.005)
        return sorted(gaps)

    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        probe = pool.submit(client.portal.call, loop_gaps, 3.0)
        logins = [
            pool.submit(login, client, f"{uuid.uuid4().hex}@x.test", "Wrong-Password-1", f"198.18.0.{i}")
            for i in range(6)
        ]
        assert all(f.result().status_code == 401 for f in logins)
        gaps = probe.result()
    # argon2 on the loop would stall it ~50 ms per verification; in worker threads the loop keeps ticking.
    assert gaps[int(len(gaps) * 0.9)] < 0.05, gaps[-10:]


def test_password_verification_runs_below_request_handling_priority(client):
    """A login flood's argon2 work runs in threads niced below the event loop (password_hash_nice), so it
    yields the cores to signed-in clients' requests instead of sharing them evenly."""
    import os
    import sys
    import threading

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are a Linux scheduling feature")
    assert login(client, f"{uuid.uuid4().hex}@nowhere.test", "Wrong-Password-1").status_code == 401
    verifiers = [t for t in threading.enumerate() if t.name.startswith("optibid-argon2")]
    assert verifiers, "password verification did not run in the low-priority pool"
    main = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id)
    for thread in verifiers:
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == main + 10, thread.name
