"""The API under abuse: normal KPI and price reads at 200 connections while, at the same time, 10 slow
exports, 5 maximal optimization requests, an unauthenticated random-key flood and a login flood run.

Prints the normal traffic's p95 and error rate with the load average, and whether any response of one
organization carried another's values. Targets: p95 < 50 ms, 0 errors, no foreign data.
`python -m benchmarks.api_abuse [admin_postgres_url] [--workers N] [--seconds S]`; the server runs as in
benchmarks/api_load.py (uvicorn, uvloop, httptools, no access log).

Normal traffic is wrk (C, so the generator costs little CPU): 200 connections rotating over KPI and price
reads of org_a, paced like benchmarks/api_load.py's Poisson run at ~`NORMAL_RPS` offered, each body
checked in Lua for org_b's values. The abuse runs at the same time from asyncio/httpx clients, at the rate
one attacking host gets through its own uplink and our per-credential limits: 10 CSV exports read at
~4 kB/s, 5 back-to-back maximal optimizations (solved in the API's killable solver processes at a lower
CPU priority, serving_api.solver), a random-API-key flood at `KEY_FLOOD_RPS` and a login flood at
`LOGIN_FLOOD_RPS`. Every process shares this box's cores (the load average says how much).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import tempfile
import time
from datetime import timedelta

import httpx

from benchmarks.harness import api_server, load_average, stop_process, wait_until_ready

TARGET_P95_MS = 50.0
NORMAL_CONNECTIONS = 200
SLOW_EXPORTS = 10
MAX_OPTIMIZE = 5
NORMAL_RPS = 2_000
KEY_FLOOD_RPS = 200
LOGIN_FLOOD_RPS = 20
FOREIGN_MARKERS = ("org_b", "2000.0")  # org_b's id and its pnl values (tests/api/conftest.py)
WRK_NORMAL_SCRIPT = """
wrk.headers["X-API-Key"] = "%(key)s"
local paths = {%(paths)s}
local threads = {}
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n); table.insert(threads, thread) end
init = function(args) math.randomseed(seed * 7919 + os.time()); i = seed; foreign = 0 end
request = function() i = i + 1; return wrk.format("GET", paths[i %% #paths + 1]) end
delay = function() return -math.log(1 - math.random()) * %(mean_wait_ms)f end
response = function(status, headers, body)
  if status == 200 and (%(checks)s) then foreign = foreign + 1 end
end
done = function(summary, latency, requests)
  local f = 0
  for _, t in ipairs(threads) do f = f + t:get("foreign") end
  io.write(string.format("RESULT %%d %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, f,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def _maximal_bids() -> dict:
    from serving_api.routers.on_demand_solves import MAX_ASSETS, MAX_HOURS, MAX_QUANTILES, MAX_TIME_LIMIT_S

    levels = [round((k + 1) / (MAX_QUANTILES + 1), 4) for k in range(MAX_QUANTILES)]
    return {
        "time_limit_s": MAX_TIME_LIMIT_S,
        "input": {
            "zone": "PJM",
            "price_quantiles": [
                {"level": lv, "prices": [20 + 40 * lv + (h % 24) for h in range(MAX_HOURS)]} for lv in levels
            ],
            "renewables": [{"asset_id": f"r{i}", "forecast_mw": [5.0] * MAX_HOURS} for i in range(MAX_ASSETS - 2)],
            "storage": [{"asset_id": f"s{i}", "power_mw": 5, "energy_mwh": 10} for i in range(2)],
        },
    }


async def _normal(base: str, key: str, targets: list[str], seconds: int, out: dict) -> None:
    script = WRK_NORMAL_SCRIPT % {
        "key": key,
        "paths": ", ".join(json.dumps(t) for t in targets),
        "mean_wait_ms": 1000.0 * NORMAL_CONNECTIONS / NORMAL_RPS,
        "checks": " or ".join(f"body:find({json.dumps(m)}, 1, true)" for m in FOREIGN_MARKERS),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t2",
        f"-c{NORMAL_CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        f.name,
        base,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    text = stdout.decode()
    requests, status_errors, socket_errors, foreign, p50, p95, p99 = re.search(
        r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", text
    ).groups()
    out.update(
        requests=int(requests),
        errors=int(status_errors) + int(socket_errors),
        foreign=int(foreign),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
    )


async def _paced(until: float, rps: float, send) -> None:
    """Call `send()` at ~`rps` per second (not faster whatever the answers' speed) until `until`."""
    interval = 1.0 / rps
    next_at = time.perf_counter()
    while time.perf_counter() < until:
        await send()
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def _slow_export(host: str, port: int, path: str, key: str, until: float, out: dict) -> None:
    """A client that reads a CSV export at ~4 kB/s: it should cost only its own socket."""
    reader, writer = await asyncio.open_connection(host, port, limit=4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n".encode())
    await writer.drain()
    try:
        while time.perf_counter() < until:
            chunk = await reader.read(1024)
            if not chunk:
                break
            out["export_bytes"] += len(chunk)
            await asyncio.sleep(0.25)
    finally:
        writer.close()


async def _optimize(base: str, key: str, until: float, out: dict) -> None:
    body = _maximal_bids()
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=60) as c:
        while time.perf_counter() < until:
            resp = await c.post("/api/v1/optimize/bids", json=body)
            out["optimize"][resp.status_code] = out["optimize"].get(resp.status_code, 0) + 1


async def _key_flood(base: str, until: float, rps: float, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def send() -> None:
            key = f"obk_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
            resp = await c.get("/api/v1/zones", headers={"X-API-Key": key})
            out["flood"][resp.status_code] = out["flood"].get(resp.status_code, 0) + 1

        await _paced(until, rps, send)


async def _login_flood(base: str, until: float, rps: float, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def send() -> None:
            resp = await c.post(
                "/api/v1/auth/token",
                data={"username": f"{secrets.token_hex(6)}@nowhere.test", "password": "Wrong-Password-1"},
            )
            out["logins"][resp.status_code] = out["logins"].get(resp.status_code, 0) + 1

        await _paced(until, rps, send)


async def _run(
    base: str, port: int, keys: dict[str, str], targets: list[str], export: str, seconds: int, abuse: bool = True
) -> dict:
    out = {"errors": 0, "foreign": 0, "export_bytes": 0, "optimize": {}, "flood": {}, "logins": {}}
    until = time.perf_counter() + seconds
    tasks = [_normal(base, keys["viewer"], targets, seconds, out)]
    if not abuse:  # the same normal traffic alone: what this box gives it right now
        await asyncio.gather(*tasks)
        return out
    tasks += [_slow_export("127.0.0.1", port, export, keys["analyst"], until, out) for _ in range(SLOW_EXPORTS)]
    tasks += [_optimize(base, keys["trader"], until, out) for _ in range(MAX_OPTIMIZE)]
    tasks += [_key_flood(base, until, KEY_FLOOD_RPS / 10, out) for _ in range(10)]
    tasks += [_login_flood(base, until, LOGIN_FLOOD_RPS / 5, out) for _ in range(5)]
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception) and not isinstance(result, httpx.HTTPError):
            raise result
    return out


def main(
    admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    workers: int = 2,
    seconds: int = 20,
    baseline: bool = False,
) -> None:
    from infra import db
    from infra.processes import free_port
    from serving_api import cli
    from tests.api.conftest import DAY0, _seed

    url = db.create_database(admin_url, "bench_api_abuse", drop_existing=True)
    db.migrate(url)
    with db.connect(url) as conn:
        _seed(conn)
    keys = {
        role: cli.create_api_key(url, "org_a", f"bench-{role}", role, rate_limit_per_minute=100_000_000)
        for role in ("viewer", "analyst", "trader")
    }
    port = free_port()
    server = api_server(url, port, workers)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, 30)
        q = f"from={DAY0.isoformat()}&to={(DAY0 + timedelta(days=1)).isoformat()}".replace("+", "%2B")
        targets = [
            f"/api/v1/kpis/avg_price?zone=PJM&grain=hour&{q}",
            f"/api/v1/kpis/pnl?zone=PJM&grain=hour&{q}",
            f"/api/v1/prices?zone=PJM&{q}",
        ]
        for target in targets:
            assert httpx.get(base + target, headers={"X-API-Key": keys["viewer"]}).status_code == 200
        export = "/api/v1/prices?zone=PJM&format=csv"
        load_before = load_average()
        if baseline:
            alone = asyncio.run(_run(base, port, keys, targets, export, seconds, abuse=False))
            print(
                f"  baseline, normal reads alone: {alone['rps']:.0f} req/s, p50 {alone['p50_ms']:.1f} ms, "
                f"p95 {alone['p95_ms']:.1f} ms, errors {alone['errors']}; {load_average()}"
            )
            load_before = load_average()
        out = asyncio.run(_run(base, port, keys, targets, export, seconds))
        p95_ms, total = out["p95_ms"], out["requests"]
        met = p95_ms < TARGET_P95_MS and out["errors"] == 0 and out["foreign"] == 0
        print(f"API abuse benchmark: uvicorn --workers {workers}, {seconds} s, {os.cpu_count()} cores")
        print(f"  before: {load_before}; after: {load_average()}")
        print(
            f"  normal reads (wrk), {NORMAL_CONNECTIONS} conn, ~{NORMAL_RPS} req/s offered: {total} requests, "
            f"{out['rps']:.0f} req/s, p50 {out['p50_ms']:.1f} ms, p95 {p95_ms:.1f} ms, p99 {out['p99_ms']:.1f} ms; "
            f"errors {out['errors']} ({100 * out['errors'] / max(total, 1):.2f} %), "
            f"foreign-org responses {out['foreign']}"
        )
        print(f"  target p95 < {TARGET_P95_MS:g} ms, 0 errors, 0 foreign: met = {met}")
        print(
            f"  abuse: slow exports read {out['export_bytes']} bytes; optimize {json.dumps(out['optimize'])}; "
            f"random-key flood {json.dumps(out['flood'])}; login flood {json.dumps(out['logins'])}"
        )
    finally:
        stop_process(server, 20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seconds", type=int, default=20, help="duration of the abuse run")
    parser.add_argument("--baseline", action="store_true", help="first run the normal traffic alone")
    args = parser.parse_args()
    main(args.admin_url, args.workers, args.seconds, args.baseline)
