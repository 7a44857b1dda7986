"""Serving-API load benchmark: cached KPI/price reads at 200 connections, closed-loop (wrk) and at a fixed
offered load of 2,000 req/s (hey), and 1,000 WebSocket clients receiving a KPI update. Prints figures and
their ratios to the targets; `python -m benchmarks.api_load [admin_postgres_url] [--workers N]`.

Needs `wrk` and `hey` on PATH (Debian packages) and a Postgres server (default the local one); creates
database `bench_api`. The server runs as documented for production: uvicorn with uvloop and httptools,
no access log, `--workers 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import timedelta

import httpx

from benchmarks.harness import api_server, load_average, stop_process, wait_until_ready

TARGET_P95_MS = 25.0
TARGET_RPS = 2000
OFFERED_RPS_PER_CONNECTION = 10  # hey -q: 200 connections x 10 req/s = 2,000 req/s offered

WRK_SCRIPT = """
wrk.headers["X-API-Key"] = "%s"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""
# Paced wrk: before each request a connection waits an exponential time with mean `connections / rate`, so
# arrivals are Poisson-like (no synchronized bursts, unlike hey's in-phase pacers) at ~`rate` req/s while
# answers are much faster than the mean wait.
WRK_PACED_SCRIPT = """
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function(args) math.randomseed(seed * 7919 + os.time()) end
delay = function() return -math.log(1 - math.random()) * %f end
"""


def _wrk(url: str, key: str, seconds: int, connections: int, paced_rps: int | None = None) -> dict[str, float]:
    """Closed loop: every connection sends its next request as soon as the previous one is answered; with
    `paced_rps`, after a random wait that offers ~`paced_rps` in total (WRK_PACED_SCRIPT)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % key)
        if paced_rps:
            f.write(WRK_PACED_SCRIPT % (1000.0 * connections / paced_rps))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", f.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests, errors, p50, p95, p99 = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out).groups()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        **({"offered_rps": paced_rps} if paced_rps else {}),
        "rps": rps,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "requests": int(requests),
        "non_2xx": int(errors),
    }


def _hey(url: str, key: str, seconds: int, connections: int, per_connection_rps: int) -> dict[str, float]:
    """Fixed offered load: each connection is paced at `per_connection_rps` (open loop while every answer
    takes less than the pacing interval; a slower answer delays that connection's next request)."""
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(connections),
            "-q",
            str(per_connection_rps),
            "-o",
            "csv",
            "-H",
            f"X-API-Key: {key}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line.split(",") for line in out.splitlines()[1:] if line]
    # response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
    ok = sorted(float(r[0]) * 1000 for r in lines if r[6] == "200")
    if not ok:
        raise RuntimeError(f"hey got no 200 answers: {out[:500]}")
    span = max(float(r[7]) + float(r[0]) for r in lines)

    def pct(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))]

    return {
        "offered_rps": connections * per_connection_rps,
        "rps": len(ok) / span,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": ok[-1],
        "requests": len(lines),
        "non_2xx": len(lines) - len(ok),
    }


async def _ws_fanout(base: str, key: str, n_clients: int, publish) -> dict[str, float]:
    import websockets

    url = base.replace("http", "ws") + f"/api/v1/ws/kpis/bench_kpi?zone=NP&grain=minute&api_key={key}"
    clients = []
    for i in range(0, n_clients, 100):
        clients += await asyncio.gather(
            *[websockets.connect(url, max_queue=None) for _ in range(min(100, n_clients - i))]
        )
    await asyncio.sleep(1)
    received: list[float] = []

    async def wait_update(ws) -> None:
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "kpi_values":
                received.append(time.perf_counter())
                return

    waiters = [asyncio.create_task(wait_update(ws)) for ws in clients]
    t0 = time.perf_counter()
    await asyncio.to_thread(publish)
    await asyncio.wait(waiters, timeout=30)
    lat = sorted(t - t0 for t in received)
    for ws in clients:
        await ws.close()
    return {
        "clients": n_clients,
        "delivered": len(lat),
        "p50_s": lat[len(lat) // 2] if lat else -1,
        "p95_s": lat[int(len(lat) * 0.95) - 1] if lat else -1,
        "max_s": lat[-1] if lat else -1,
    }


def _line(name: str, r: dict[str, float]) -> str:
    figures = (
        f"  {name:38s} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p95 {r['p95_ms']:6.2f} ms  "
        f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}"
    )
    p95 = f"p95 / 25 ms = {r['p95_ms'] / TARGET_P95_MS:.2f} (met: {r['p95_ms'] < TARGET_P95_MS})"
    if "offered_rps" in r:  # the rate is set by the generator: did the server keep up with it?
        rate = f"served / offered = {r['rps'] / r['offered_rps']:.2f}"
    else:
        rate = f"req/s / 2,000 = {r['rps'] / TARGET_RPS:.2f} (met: {r['rps'] >= TARGET_RPS})"
    return f"{figures}\n  {'':38s} {p95}   {rate}   [{load_average()}]"


def main(admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres", workers: int = 2, seconds: int = 10):
    from infra import db
    from infra.processes import free_port
    from infra.signals import notify_kpi_update
    from serving_api import cli
    from tests.api.conftest import DAY0, _seed  # the API tests' contract-shaped fixture data

    url = db.create_database(admin_url, "bench_api", drop_existing=True)
    db.migrate(url)
    with db.connect(url) as conn:
        _seed(conn)
    key = cli.create_api_key(url, "org_a", "bench", "viewer", rate_limit_per_minute=100_000_000)
    port = free_port()
    server = api_server(url, port, workers)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, 30)
        day = (DAY0.isoformat(), (DAY0 + timedelta(days=1)).isoformat())
        q = f"from={day[0]}&to={day[1]}".replace("+", "%2B")
        targets = {
            "kpi (cached)": f"{base}/api/v1/kpis/avg_price?zone=PJM&grain=hour&{q}",
            "prices (cached)": f"{base}/api/v1/prices?zone=PJM&{q}",
        }
        print(
            f"API load benchmark: uvicorn --workers {workers} (uvloop, httptools, no access log); load generator "
            f"on the same {os.cpu_count()}-core box; {load_average()}"
        )
        for name, target in targets.items():
            warm = httpx.get(target, headers={"X-API-Key": key})
            assert warm.status_code == 200, warm.text
            _wrk(target, key, seconds=2, connections=200)  # every worker has its own cache: fill them all
            closed = _wrk(target, key, seconds=seconds, connections=200)
            print(_line(f"{name}, wrk closed loop, 200 conn", closed))
            paced = _wrk(target, key, seconds=seconds, connections=200, paced_rps=TARGET_RPS)
            print(_line(f"{name}, wrk ~2,000 req/s Poisson, 200 conn", paced))
            if shutil.which("hey"):
                bursts = _hey(target, key, seconds, 200, OFFERED_RPS_PER_CONNECTION)
                print(_line(f"{name}, hey 2,000 req/s offered, 200 conn", bursts))
            else:
                print("  (hey not installed: apt-get install hey for the fixed-offered-load figures)")

        def publish() -> None:
            with db.connect(url) as conn:
                conn.execute(
                    "INSERT INTO gold.kpi_values VALUES ('bench_kpi', 'minute', 'NP', NULL, %s, %s, 1)",
                    (DAY0, DAY0.date()),
                )
                notify_kpi_update(conn, "bench_kpi", "minute", "NP", DAY0, DAY0)

        ws = asyncio.run(_ws_fanout(base, key, 1000, publish))
        print(
            f"  websocket fan-out: {ws['delivered']}/{ws['clients']} clients got the update; "
            f"p50 {ws['p50_s']:.3f} s  p95 {ws['p95_s']:.3f} s  max {ws['max_s']:.3f} s "
            f"(max / 1 s = {ws['max_s']:.2f}, met: {ws['delivered'] == ws['clients'] and ws['max_s'] < 1})   "
            f"[{load_average()}]"
        )
    finally:
        stop_process(server, 20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load run")
    args = parser.parse_args()
    main(args.admin_url, args.workers, args.seconds)
