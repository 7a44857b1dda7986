"""The API under abuse: normal KPI and price reads at 200 connections while, at the same time, 10 slow
exports, 5 maximal optimization requests, an unauthenticated random-key flood and a login flood run.

Prints the normal traffic's p95 and error rate with the load average, and whether any response of one
organization carried another's values. Targets: p95 < 50 ms, 0 errors, no foreign data.
`python -m benchmarks.api_abuse [admin_postgres_url] [--workers N] [--seconds S]`; the server runs as in
benchmarks/api_load.py (uvicorn, uvloop, httptools, no access log); the load generators are asyncio/httpx
clients on the same box, so their CPU competes with the server's (the load average says how much).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from datetime import timedelta

import httpx

from benchmarks.api_load import _load, _server

TARGET_P95_MS = 50.0
NORMAL_CONNECTIONS = 200
SLOW_EXPORTS = 10
MAX_OPTIMIZE = 5
FOREIGN_MARKERS = ("org_b", "2000.0")  # org_b's id and its pnl values (tests/api/conftest.py)


def _maximal_bids() -> dict:
    from serving_api.routers.optimize import MAX_ASSETS, MAX_HOURS, MAX_QUANTILES, MAX_TIME_LIMIT_S

    levels = [round((k + 1) / (MAX_QUANTILES + 1), 4) for k in range(MAX_QUANTILES)]
    return {
        "time_limit_s": MAX_TIME_LIMIT_S,
        "input": {
            "zone": "PJM",
            "price_quantiles": [
                {"level": lv, "prices": [20 + 40 * lv + (h % 24) for h in range(MAX_HOURS)]} for lv in levels
            ],
            "renewables": [
                {"asset_id": f"r{i}", "forecast_mw": [5.0] * MAX_HOURS} for i in range(MAX_ASSETS - 2)
            ],
            "storage": [{"asset_id": f"s{i}", "power_mw": 5, "energy_mwh": 10} for i in range(2)],
        },
    }


async def _normal(base: str, key: str, targets: list[str], until: float, out: dict) -> None:
    limits = httpx.Limits(max_connections=NORMAL_CONNECTIONS, max_keepalive_connections=NORMAL_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, limits=limits, timeout=30) as c:

        async def worker(n: int) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    resp = await c.get(targets[n % len(targets)])
                    ok = resp.status_code == 200
                    if ok and any(m in resp.text for m in FOREIGN_MARKERS):
                        out["foreign"] += 1
                except httpx.HTTPError:
                    ok = False
                out["latencies"].append(time.perf_counter() - started)
                out["errors"] += 0 if ok else 1

        await asyncio.gather(*(worker(n) for n in range(NORMAL_CONNECTIONS)))


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


async def _key_flood(base: str, until: float, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        while time.perf_counter() < until:
            key = f"obk_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
            resp = await c.get("/api/v1/zones", headers={"X-API-Key": key})
            out["flood"][resp.status_code] = out["flood"].get(resp.status_code, 0) + 1


async def _login_flood(base: str, until: float, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        while time.perf_counter() < until:
            resp = await c.post(
                "/api/v1/auth/token",
                data={"username": f"{secrets.token_hex(6)}@nowhere.test", "password": "Wrong-Password-1"},
            )
            out["logins"][resp.status_code] = out["logins"].get(resp.status_code, 0) + 1


async def _run(base: str, port: int, keys: dict[str, str], targets: list[str], export: str, seconds: int) -> dict:
    out = {"latencies": [], "errors": 0, "foreign": 0, "export_bytes": 0, "optimize": {}, "flood": {}, "logins": {}}
    until = time.perf_counter() + seconds
    tasks = [_normal(base, keys["viewer"], targets, until, out)]
    tasks += [_slow_export("127.0.0.1", port, export, keys["analyst"], until, out) for _ in range(SLOW_EXPORTS)]
    tasks += [_optimize(base, keys["trader"], until, out) for _ in range(MAX_OPTIMIZE)]
    tasks += [_key_flood(base, until, out) for _ in range(10)]
    tasks += [_login_flood(base, until, out) for _ in range(5)]
    await asyncio.gather(*tasks, return_exceptions=True)
    return out


def main(admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres", workers: int = 2, seconds: int = 20):
    from infra import db
    from infra.services import free_port
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
    server = _server(url, port, workers)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        q = f"from={DAY0.isoformat()}&to={(DAY0 + timedelta(days=1)).isoformat()}".replace("+", "%2B")
        targets = [
            f"/api/v1/kpis/avg_price?zone=PJM&grain=hour&{q}",
            f"/api/v1/kpis/pnl?zone=PJM&grain=hour&{q}",
            f"/api/v1/prices?zone=PJM&{q}",
        ]
        for target in targets:
            assert httpx.get(base + target, headers={"X-API-Key": keys["viewer"]}).status_code == 200
        export = "/api/v1/prices?zone=PJM&format=csv"
        out = asyncio.run(_run(base, port, keys, targets, export, seconds))
        lat = sorted(out["latencies"])
        p95_ms = 1000 * lat[int(len(lat) * 0.95)] if lat else float("nan")
        total = len(lat)
        print(f"API abuse benchmark: uvicorn --workers {workers}, {seconds} s, {os.cpu_count()} cores; {_load()}")
        print(
            f"  normal reads, {NORMAL_CONNECTIONS} conn: {total} requests, {total / seconds:.0f} req/s, "
            f"p95 {p95_ms:.1f} ms (target < {TARGET_P95_MS:g}: {p95_ms < TARGET_P95_MS}), "
            f"errors {out['errors']} ({100 * out['errors'] / max(total, 1):.2f} %), "
            f"foreign-org responses {out['foreign']}"
        )
        print(f"  abuse: slow exports read {out['export_bytes']} bytes; optimize {json.dumps(out['optimize'])}; "
              f"random-key flood {json.dumps(out['flood'])}; login flood {json.dumps(out['logins'])}")
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seconds", type=int, default=20, help="duration of the abuse run")
    args = parser.parse_args()
    main(args.admin_url, args.workers, args.seconds)
