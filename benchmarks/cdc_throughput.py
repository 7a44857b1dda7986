"""CDC ingestion benchmark: drain throughput into bronze and end-to-end latency in follow mode.

    python -m benchmarks.cdc_throughput [--events 1000000] [--partitions 6] [--rate 20000] [--seconds 15]
                                        [--fetch-processes 2]

1. Produces `--events` simulated Debezium bid changes (realistic ~720-byte envelopes) over `--partitions`
   partitions of a fresh topic, then times `CdcConsumer.drain()` into an empty lake (events/s), with
   kafka-python fetching in `--fetch-processes` child processes (0 = in-process). Also prints the CPU
   seconds the drain used (this process, its threads and its fetch processes): on a shared machine the wall
   rate depends on the load, CPU microseconds per event do not.
2. Starts `python -m ingestion.cdc.cli --follow` as a separate process on a second topic, produces at a
   steady `--rate` for `--seconds`, and measures each event's latency as the time of the Delta commit
   that holds it minus its Kafka timestamp (p50 / p99 / max).

Uses KAFKA_BOOTSTRAP_SERVERS or the embedded broker; produces with confluent-kafka when installed (dev
dependency), else kafka-python. Prints figures; targets are >= 50,000 events/s and p99 < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from infra.lake import Lake
from infra.services import embedded_broker_bootstrap, kafka_security_config
from infra.settings import get_settings
from ingestion.cdc import CdcConsumer
from ingestion.simulator.trading import ensure_topics, trading_events

REPO_ROOT = Path(__file__).resolve().parents[1]


def bid_events(n: int, seed: int):
    """n bid envelopes (the bids topic's share of the simulated trading stream)."""
    count = 0
    for event in trading_events(10 * n + 1000, seed=seed):
        if event.topic.endswith(".bids") and event.value is not None:
            yield event.key, event.value
            count += 1
            if count >= n:
                return


def produce(bootstrap: str, topic: str, messages, rate: float | None = None) -> int:
    """Send messages (optionally paced at `rate` per second); the number sent."""
    sent = 0
    started = time.monotonic()
    try:
        from confluent_kafka import Producer
    except ImportError:  # the product's own client
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=1 << 20)
        for key, value in messages:
            producer.send(topic, key=key, value=value)
            sent += 1
            if rate and sent % 500 == 0:
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        producer.flush()
        return sent
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1 << 20,
                         "queue.buffering.max.messages": 500_000})
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        sent += 1
        if sent % 500 == 0:
            producer.poll(0)
            if rate:
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    producer.flush(60)
    return sent


def cpu_seconds(which: int | None = None) -> float:
    """CPU time of this process (all threads) plus its waited-for children so far (or of `which` only)."""
    kinds = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if which is None else (which,)
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, kinds))


def bench_drain(
    bootstrap: str, security: dict, events: int, partitions: int, lake: Lake, fetch_processes: int
) -> None:
    topic = f"bench{uuid.uuid4().hex[:6]}.public.bids"
    ensure_topics(bootstrap, [topic], partitions, security)
    t0 = time.perf_counter()
    sent = produce(bootstrap, topic, bid_events(events, seed=1))
    produce_s = time.perf_counter() - t0
    print(f"produced {sent:,} events to {topic} ({partitions} partitions) in {produce_s:.1f}s")
    fetch_rate = raw_fetch_rate(bootstrap, security, topic, sent)
    print(f"kafka-python alone (fetch, no processing): {fetch_rate:,.0f} events/s")
    config = {"bootstrap_servers": bootstrap, **security}
    with CdcConsumer(lake, config, [topic], fetch_processes=fetch_processes) as consumer:
        load = os.getloadavg()[0]
        t0, cpu0, own0 = time.perf_counter(), cpu_seconds(), cpu_seconds(resource.RUSAGE_SELF)
        stats = consumer.drain()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        own = cpu_seconds(resource.RUSAGE_SELF) - own0
    rows = lake.table("bronze", "cdc__bids").to_pyarrow_dataset().count_rows()
    rate = stats.events_read / wall
    cpu_us = 1e6 * cpu / max(1, stats.events_read)
    print(
        f"drain ({fetch_processes} fetch processes): {stats.events_read:,} events read, {rows:,} bronze rows, "
        f"{stats.dead_lettered} dead letters, {stats.batches} batches, {wall:.1f}s wall -> {rate:,.0f} events/s "
        f"({rate / fetch_rate:.0%} of the single-process bare fetch rate); {cpu:.1f} CPU s = {cpu_us:.1f} CPU us "
        f"per event, of which {1e6 * own / max(1, stats.events_read):.1f} in the writing process (decode + "
        f"Delta; its one core bounds the rate at ~{stats.events_read / max(own, 1e-9):,.0f}/s, 2 idle cores at "
        f"~{2e6 / cpu_us:,.0f}/s); "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )


def raw_fetch_rate(bootstrap: str, security: dict, topic: str, expected: int) -> float:
    """Events/s kafka-python fetches with no processing at all: the ceiling for any kafka-python consumer."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20, **security)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    n, t0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    while n < expected:
        n += sum(len(v) for v in consumer.poll(timeout_ms=1000, max_records=50_000).values())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    consumer.close()
    print(f"bare fetch: {1e6 * cpu / n:.1f} CPU us per event")
    return n / wall


def bench_follow(bootstrap: str, security: dict, rate: int, seconds: int, lake: Lake) -> None:
    topic = f"bench{uuid.uuid4().hex[:6]}.public.bids"
    ensure_topics(bootstrap, [topic], 6, security)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
         "--lake", lake.root, "--follow", "--batch-events", "50000", "--batch-seconds", "0.25"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3)  # consumer start-up (imports, metadata) is not latency
        messages = list(bid_events(rate * seconds, seed=2))
        sent = produce(bootstrap, topic, messages, rate=rate)
        deadline = time.monotonic() + 30
        table = None
        while time.monotonic() < deadline:
            table = lake.table("bronze", "cdc__bids")
            if table is not None and table.to_pyarrow_dataset().count_rows() >= sent:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"follow consumer failed: {err.decode()[-2000:]}")
    table = lake.table("bronze", "cdc__bids")
    commit_ms = {
        h["optibid.batch_id"]: h["timestamp"] for h in table.history() if "optibid.batch_id" in h
    }
    data = table.to_pyarrow_table(columns=["_batch_id", "_kafka_timestamp"])
    kafka_ms = pc.cast(data["_kafka_timestamp"], "int64").to_numpy() // 1000
    committed = np.array([commit_ms[b] for b in data["_batch_id"].to_pylist()])
    latency = (committed - kafka_ms) / 1000.0
    print(
        f"follow: {sent:,} events at {rate:,}/s for {seconds}s -> {len(latency):,} in bronze, "
        f"{len(commit_ms)} commits; latency p50 {np.percentile(latency, 50):.3f}s, "
        f"p99 {np.percentile(latency, 99):.3f}s, max {latency.max():.3f}s"
    )
    print(f"follow consumer summary: {json.loads(out.decode().strip().splitlines()[-1])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=20_000, help="events/s produced during the follow test")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--fetch-processes", type=int, default=2, help="kafka-python fetch processes (drain)")
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--skip-follow", action="store_true")
    args = parser.parse_args()

    settings = get_settings()
    bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
    security = kafka_security_config(settings)
    with tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
        if not args.skip_drain:
            bench_drain(
                bootstrap, security, args.events, args.partitions, Lake(f"{tmp}/drain"), args.fetch_processes
            )
        if not args.skip_follow:
            bench_follow(bootstrap, security, args.rate, args.seconds, Lake(f"{tmp}/follow"))


if __name__ == "__main__":
    main()
