"""Serving-API load benchmark: cached KPI/price reads with wrk at 200 connections, and 1,000 WebSocket
clients receiving a KPI update. Prints figures; run `python -m benchmarks.api_load [admin_postgres_url]`.

Needs `wrk` on PATH and a Postgres server (default the local one); creates database `bench_api`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

WRK_SCRIPT = """
wrk.headers["X-API-Key"] = "%s"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def _wrk(url: str, key: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % key)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", f.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests, errors, p50, p95, p99 = re.search(
        r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out
    ).groups()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "rps": rps,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "requests": int(requests),
        "non_2xx": int(errors),
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


def main(admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> None:
    from infra import db
    from infra.services import free_port
    from serving_api import cli
    from serving_api.notifications import notify_kpi_update
    from tests.api.conftest import DAY0, _seed  # the API tests' contract-shaped fixture data

    url = db.create_database(admin_url, "bench_api", drop_existing=True)
    db.migrate(url)
    with db.connect(url) as conn:
        _seed(conn)
    key = cli.create_api_key(url, "org_a", "bench", "viewer", rate_limit_per_minute=100_000_000)
    port = free_port()
    home = tempfile.mkdtemp(prefix="bench_api_")
    env = {
        **os.environ,
        "OPTIBID_DATABASE_URL": url,
        "OPTIBID_HOME": home,
        "OPTIBID_JWT_SECRET": "bench-" + "x" * 40,
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "serving_api.app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=Path(__file__).parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        day = (DAY0.isoformat(), (DAY0 + timedelta(days=1)).isoformat())
        q = f"from={day[0]}&to={day[1]}".replace("+", "%2B")
        targets = {
            "kpi (cached)": f"{base}/api/v1/kpis/avg_price?zone=PJM&grain=hour&{q}",
            "prices (cached)": f"{base}/api/v1/prices?zone=PJM&{q}",
        }
        print("API load benchmark (1 uvicorn worker; 2 cores shared with other agents, wrk on the same box)")
        for name, target in targets.items():
            warm = httpx.get(target, headers={"X-API-Key": key})
            assert warm.status_code == 200, warm.text
            r = _wrk(target, key, seconds=10, connections=200)
            print(
                f"  {name:16s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p95 {r['p95_ms']:6.2f} ms  "
                f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}  "
                f"(target p95 < 25 ms: {r['p95_ms'] < 25}, >= 2000 req/s: {r['rps'] >= 2000})"
            )

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
            f"(target < 1 s: {ws['max_s'] < 1})"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(*sys.argv[1:])
