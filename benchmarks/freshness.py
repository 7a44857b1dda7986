"""Freshness benchmark: how long data takes to reach the API and the KPI WebSocket under steady load.

    python -m benchmarks.freshness [admin_postgres_url] [--rate 200] [--seconds 60] [--probe-every 10]

Part 1, market ticks -> minute KPIs (target: p95 <= 30 s). Creates database `bench_freshness` on the
Postgres server (default the local one), migrates it, seeds the reference data and builds gold once with
dbt (on empty market data, so `gold.kpi_values` and the KPI catalogue exist). Then, on the real broker
(KAFKA_BOOTSTRAP_SERVERS or the embedded one), it starts `python -m ingestion.cdc.cli --follow` (the
real-time writer on) and the API (uvicorn, one worker, as deployed), subscribes one WebSocket client per
zone, and produces simulated ticks at `--rate` per second for `--seconds`. Every `--probe-every`-th
zone-level tick is a probe: its latency is the time from its send to the first API answer, and to the first
WebSocket message, that holds its minute with its price. The peer figure from the same run is the bare
produce -> bronze Delta commit latency of every tick (from the commit timestamps, as in cdc_throughput).

Part 2, files landed -> gold hourly served (target: p95 <= 5 min), with `--files-minutes N`: the whole
platform as `optibid demo` runs it (Dagster code server, webserver and daemon with the default sensor
intervals, the API, the follow consumer) on database `bench_freshness_files`. After a first market day has
been built by the automation (its time is printed as the cold start), ticks flow at `--rate` per second and
every minute a corrected price file for that day lands, each moving every price by one more unit. A file's
latency is the time from its drop to the API serving its prices (or a later file's).

Every figure is printed with the load average of the machine beside it (a shared 2-core box).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow.compute as pc

from benchmarks.harness import (
    api_server,
    listen_kpi_values,
    load_average,
    stop_process,
    stopping_started_services,
    wait_until_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_S = 30.0
ZONES = ("PJM", "NYISO", "ERCOT", "CAISO", "IEX_N", "IEX_S", "IEX_W")


def _prepare_warehouse(admin_url: str) -> str:
    from infra import db
    from infra.dbt import run_dbt
    from ingestion.reference import seed_reference_data

    url = db.create_database(admin_url, "bench_freshness", drop_existing=True)
    db.migrate(url)
    with db.connect(url) as conn:
        seed_reference_data(conn)
    started = time.monotonic()
    target = Path(tempfile.mkdtemp(prefix="bench_freshness_dbt_"))
    run_dbt(["seed"], database_url=url, target_path=target)
    run_dbt(["run", "--select", "+kpi_values"], database_url=url, target_path=target)
    print(f"gold built by dbt in {time.monotonic() - started:.0f} s (setup, not measured)   [{load_average()}]")
    return url


class Probes:
    """Probe ticks in flight and when each was first seen with its price on the API and the WebSocket."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, datetime], tuple[float, float]] = {}  # key -> (send time, price)
        self.api: dict[tuple[str, datetime], float] = {}
        self.ws: dict[tuple[str, datetime], float] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []

    def seen(self, where: dict, zone: str, period_start: str, value: float) -> None:
        key = (zone, datetime.fromisoformat(period_start).astimezone(UTC))
        with self.lock:
            probe = self.sent.get(key)
            if probe is not None and key not in where and value == probe[1]:
                where[key] = time.time()

    def poll_api(self, base: str, key: str) -> None:
        with httpx.Client(headers={"X-API-Key": key}, timeout=10) as http:
            while not self.stop.is_set():
                with self.lock:
                    pending = [k for k in self.sent if k not in self.api]
                for zone, ts in pending:
                    params = {
                        "zone": zone,
                        "grain": "minute",
                        "from": ts.isoformat(),
                        "to": (ts + timedelta(minutes=1)).isoformat(),
                    }
                    try:
                        resp = http.get(f"{base}/api/v1/kpis/price_avg", params=params)
                        resp.raise_for_status()
                        for row in resp.json()["data"]:
                            self.seen(self.api, zone, row["period_start"], row["value"])
                    except Exception as exc:
                        self.errors.append(repr(exc))
                self.stop.wait(0.2)

    def listen(self, base: str, key: str, zone: str, ready: threading.Barrier) -> None:
        url = base.replace("http", "ws", 1) + f"/api/v1/ws/kpis/price_avg?zone={zone}&grain=minute&api_key={quote(key)}"
        try:
            listen_kpi_values(url, self.stop, ready, lambda start, value: self.seen(self.ws, zone, start, value))
        except Exception as exc:
            self.errors.append(f"websocket {zone}: {exc!r}")


def _produce_steady(
    bootstrap: str,
    topic: str,
    rate: int,
    seconds: int,
    probe_every: int,
    probes: Probes,
    stop: threading.Event | None = None,
) -> int:
    """Simulated ticks at `rate`/s for `seconds` or until `stop` is set; every `probe_every`-th zone-level
    tick is registered as a probe. Returns the ticks sent."""
    from kafka import KafkaProducer

    from ingestion.simulator.trading import TICK_NODES_PER_ZONE, market_tick_events

    n = rate * seconds
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    intervals = n // (len(ZONES) * (TICK_NODES_PER_ZONE + 1)) + 1
    start = now - timedelta(minutes=5 * intervals + now.minute % 5)  # ends now, within retention
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    zone_ticks = 0
    t0 = time.monotonic()
    sent = 0
    for i, event in enumerate(market_tick_events(n, seed=7, start=start, topic=topic)):
        if stop is not None and stop.is_set():
            break
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        tick = orjson.loads(event.value)
        if tick["node"] is None:
            zone_ticks += 1
            if zone_ticks % probe_every == 0:
                with probes.lock:
                    probes.sent[(tick["zone"], datetime.fromisoformat(tick["ts_utc"]))] = (time.time(), tick["price"])
        producer.send(topic, key=event.key, value=event.value)
        sent += 1
    producer.flush()
    producer.close()
    return sent


def _bronze_latency(lake_root: str) -> np.ndarray:
    from infra.lake import Lake
    from ingestion.cdc.topics import TICKS_TABLE

    table = Lake(lake_root).table("bronze", TICKS_TABLE)
    commit_ms = {h["optibid.batch_id"]: h["timestamp"] for h in table.history() if "optibid.batch_id" in h}
    data = table.to_pyarrow_table(columns=["_batch_id", "_kafka_timestamp"])
    kafka_ms = pc.cast(data["_kafka_timestamp"], "int64").to_numpy() // 1000
    committed = np.array([commit_ms[b] for b in data["_batch_id"].to_pylist()])
    return (committed - kafka_ms) / 1000.0


def _line(name: str, latencies: np.ndarray, peer_p95: float | None, expected: int) -> str:
    if not len(latencies):
        return f"  {name:36s} nothing observed of {expected} probes   [{load_average()}]"
    p50, p95 = np.percentile(latencies, 50), np.percentile(latencies, 95)
    line = (
        f"  {name:36s} n={len(latencies)}/{expected}  p50 {p50:6.2f} s  p95 {p95:6.2f} s  max {latencies.max():6.2f} s"
    )
    met = p95 <= TARGET_P95_S and len(latencies) == expected
    ratios = f"p95 / {TARGET_P95_S:.0f} s = {p95 / TARGET_P95_S:.3f} (met: {met})"
    if peer_p95:
        ratios += f"   p95 / bronze p95 = {p95 / peer_p95:.2f}"
    return f"{line}\n  {'':36s} {ratios}   [{load_average()}]"


def main(admin_url: str, rate: int, seconds: int, probe_every: int) -> None:
    from infra.processes import free_port
    from infra.services import embedded_broker_bootstrap
    from infra.settings import get_settings
    from ingestion.simulator.trading import ensure_topics
    from serving_api import cli

    settings = get_settings()
    bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
    url = _prepare_warehouse(admin_url)
    key = cli.create_api_key(url, "acme", "bench", "viewer", rate_limit_per_minute=100_000_000)
    topic = f"bench{uuid.uuid4().hex[:6]}.market.ticks"
    ensure_topics(bootstrap, [topic], 6)
    lake_root = tempfile.mkdtemp(prefix="bench_freshness_lake_")
    port = free_port()
    api = api_server(url, port, 1)
    try:
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingestion.cdc.cli",
                "--topic",
                topic,
                "--bootstrap",
                bootstrap,
                "--lake",
                lake_root,
                "--follow",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "OPTIBID_DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except BaseException:
        stop_process(api, 20)
        raise
    base = f"http://127.0.0.1:{port}"
    probes = Probes()
    threads: list[threading.Thread] = []
    try:
        wait_until_ready(base, 60)
        ready = threading.Barrier(len(ZONES) + 1)
        threads = [threading.Thread(target=probes.listen, args=(base, key, z, ready), daemon=True) for z in ZONES]
        threads.append(threading.Thread(target=probes.poll_api, args=(base, key), daemon=True))
        for thread in threads:
            thread.start()
        ready.wait(timeout=60)
        time.sleep(3)  # consumer start-up (imports, metadata) is not latency
        print(
            f"freshness part 1: {rate} ticks/s for {seconds} s -> follow consumer -> minute KPIs; "
            f"API uvicorn 1 worker; {len(ZONES)} WebSocket clients; {os.cpu_count()}-core box   [{load_average()}]"
        )
        sent = _produce_steady(bootstrap, topic, rate, seconds, probe_every, probes)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with probes.lock:
                done = all(k in probes.api and k in probes.ws for k in probes.sent)
            if done:
                break
            time.sleep(0.5)
    finally:
        probes.stop.set()
        for thread in threads:
            thread.join(5)
        consumer.send_signal(signal.SIGTERM)
        try:
            out, err = consumer.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            consumer.kill()
            out, err = consumer.communicate()
        finally:
            stop_process(api, 20)
    if consumer.returncode != 0:
        raise SystemExit(f"follow consumer failed: {err.decode()[-2000:]}")
    bronze = _bronze_latency(lake_root)
    bronze_p95 = float(np.percentile(bronze, 95))
    with probes.lock:
        api_lat = np.array([probes.api[k] - probes.sent[k][0] for k in probes.api])
        ws_lat = np.array([probes.ws[k] - probes.sent[k][0] for k in probes.ws])
        expected = len(probes.sent)
    print(
        f"  {'produce -> bronze commit (peer)':36s} n={len(bronze)}/{sent}  p50 {np.percentile(bronze, 50):6.2f} s  "
        f"p95 {bronze_p95:6.2f} s  max {bronze.max():6.2f} s   [{load_average()}]"
    )
    print(_line("produce -> minute KPI served (API)", api_lat, bronze_p95, expected))
    print(_line("produce -> minute KPI pushed (WS)", ws_lat, bronze_p95, expected))
    if probes.errors:
        print(f"  client errors: {len(probes.errors)}, first: {probes.errors[0]}")
    print(f"  follow consumer summary: {json.loads(out.decode().strip().splitlines()[-1])}")


FILES_TARGET_P95_S = 300.0
FILES_ZONES = ("PJM", "ERCOT")


def _price_file(day, offset: float, landing: Path, name: str) -> None:
    from ingestion.simulator.market import iter_market_days, simulated_zones

    zones = [z for z in simulated_zones() if z.zone in FILES_ZONES]
    market = next(iter(iter_market_days(day, 1, zones=zones, nodes_per_zone=1, seed=5)))
    prices = market.prices_hourly.copy()
    prices.loc[prices.market == "DA", "price"] += offset
    prices["ts_utc"] = pd.to_datetime(prices.ts_utc, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = landing / f".{name}.tmp"
    prices.to_csv(tmp, index=False)
    os.replace(tmp, landing / name)


def _served_offset(api_url: str, key: str, day, base: dict) -> float | None:
    """How far the served PJM DA prices of `day` are above the simulated ones (None: not served yet)."""
    response = httpx.get(
        f"{api_url}/api/v1/prices",
        params={
            "zone": "PJM",
            "market": "DA",
            "from": f"{day}T00:00:00Z",
            "to": f"{day + timedelta(days=1)}T00:00:00Z",
        },
        headers={"X-API-Key": key},
        timeout=30,
    )
    rows = response.json().get("data", []) if response.status_code == 200 else []
    served = {pd.Timestamp(r["ts_utc"]): r["price_avg"] for r in rows}
    offsets = {round(price - base[ts], 6) for ts, price in served.items() if ts in base}
    return offsets.pop() if len(offsets) == 1 else None


def files_to_gold(admin_url: str, rate: int, minutes: int) -> None:
    from app.platform import PlatformProcesses
    from infra import db
    from infra.dagster_instance import write_dagster_home
    from infra.processes import free_port
    from infra.services import embedded_broker_bootstrap
    from infra.settings import get_settings
    from ingestion.cdc.topics import TICKS_TOPIC, default_topics
    from ingestion.reference import seed_reference_data
    from ingestion.simulator.market import iter_market_days, simulated_zones
    from ingestion.simulator.trading import ensure_topics
    from serving_api import cli

    settings = get_settings()
    bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
    url = db.create_database(admin_url, "bench_freshness_files", drop_existing=True)
    db.migrate(url)
    with db.connect(url) as conn:
        seed_reference_data(conn)
    key = cli.create_api_key(url, "acme", "bench", "viewer", rate_limit_per_minute=100_000_000)
    ensure_topics(bootstrap, default_topics())
    root = Path(tempfile.mkdtemp(prefix="bench_freshness_files_"))
    landing = root / "landing"
    landing.mkdir()
    day = datetime.now(UTC).date() - timedelta(days=2)
    zones = [z for z in simulated_zones() if z.zone in FILES_ZONES]
    market = next(iter(iter_market_days(day, 1, zones=zones, nodes_per_zone=1, seed=5)))
    hourly = market.prices_hourly
    da = hourly[(hourly.zone == "PJM") & (hourly.market == "DA") & hourly.node.isna()]
    base = {ts: float(p) for ts, p in zip(pd.to_datetime(da.ts_utc, utc=True), da.price, strict=True)}
    _price_file(day, 0.0, landing, f"prices_hourly_{day}.csv")
    dagster_home = write_dagster_home(settings.model_copy(update={"dagster_home_override": root / "dagster_home"}))
    env = {
        **os.environ,
        "OPTIBID_DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DAGSTER_HOME": str(dagster_home),
        "OPTIBID_LANDING_DIR": str(landing),
        "OPTIBID_LAKE_URI": str(root / "lake"),
        "OPTIBID_UPLOADS_DIR": str(root / "uploads"),
        "OPTIBID_PARTITION_START": day.isoformat(),
    }
    processes = PlatformProcesses(
        env=env,
        dagster_home=dagster_home,
        log_dir=root / "logs",
        dagster_port=free_port(),
        api_port=free_port(),
        cwd=REPO_ROOT,
    )
    started = time.monotonic()
    with processes:
        processes.wait_until_serving()
        while _served_offset(processes.api_url, key, day, base) != 0.0:
            if time.monotonic() - started > 1800:
                raise SystemExit(f"the first day was not served within 30 min; logs in {root / 'logs'}")
            time.sleep(2)
        cold = time.monotonic() - started
        print(
            f"freshness part 2: platform processes up -> first market day served (cold start) {cold:6.1f} s"
            f"   [{load_average()}]"
        )
        stop = threading.Event()
        ticks = threading.Thread(
            target=lambda: _produce_steady(bootstrap, TICKS_TOPIC, rate, minutes * 60 + 600, 10**9, Probes(), stop),
            daemon=True,
        )
        ticks.start()
        drops: dict[int, float] = {}
        served: dict[int, float] = {}
        next_drop = time.monotonic()
        offset = 0
        deadline = time.monotonic() + minutes * 60 + 600
        while time.monotonic() < deadline and (offset < minutes or len(served) < offset):
            now = time.monotonic()
            if offset < minutes and now >= next_drop:
                offset += 1
                _price_file(day, float(offset), landing, f"prices_hourly_{day}_rev{offset}.csv")
                drops[offset] = now
                next_drop = now + 60
            current = _served_offset(processes.api_url, key, day, base)
            if current:
                for k in drops:
                    if k <= current and k not in served:
                        served[k] = time.monotonic()
            time.sleep(1)
        stop.set()
        ticks.join(timeout=30)  # before the broker stops under the producer
    latencies = np.array([served[k] - drops[k] for k in sorted(served)])
    print(
        f"  {minutes} corrected files, one a minute, {rate} ticks/s alongside; {len(served)}/{len(drops)} served"
        f"   [{load_average()}]"
    )
    if len(latencies):
        p50, p95 = np.percentile(latencies, 50), np.percentile(latencies, 95)
        print(
            f"  {'file landed -> gold hourly served (API)':40s} p50 {p50:6.1f} s  p95 {p95:6.1f} s  "
            f"max {latencies.max():6.1f} s  target p95 <= {FILES_TARGET_P95_S:.0f} s "
            f"(p95/target {p95 / FILES_TARGET_P95_S:.2f}; p95/cold start {p95 / cold:.2f})   [{load_average()}]"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rate", type=int, default=200, help="ticks per second")
    parser.add_argument("--seconds", type=int, default=60, help="duration of the steady load")
    parser.add_argument("--probe-every", type=int, default=10, help="every n-th zone-level tick is a probe")
    parser.add_argument("--files-minutes", type=int, default=0, help="part 2: minutes of one corrected file a minute")
    parser.add_argument("--files-only", action="store_true", help="part 2 alone (with --files-minutes)")
    args = parser.parse_args()
    with stopping_started_services():  # the embedded broker, when no KAFKA_BOOTSTRAP_SERVERS is set
        if not args.files_only:
            main(args.admin_url, args.rate, args.seconds, args.probe_every)
        if args.files_minutes:
            files_to_gold(args.admin_url, args.rate, args.files_minutes)
