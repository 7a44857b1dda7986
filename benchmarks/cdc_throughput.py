"""CDC ingestion benchmark: drain throughput into bronze and end-to-end latency in follow mode.

    python -m benchmarks.cdc_throughput [--events 1000000] [--partitions 6] [--rate 20000] [--seconds 15]
                                        [--fetch-processes 2] [--consumer-events 300000] [--consumer-processes 1,2,3]

1. Produces `--events` simulated Debezium bid changes (realistic ~720-byte envelopes) over `--partitions`
   partitions of a fresh topic, measures the bare fetch rate of kafka-python and of librdkafka (one
   process, no processing), then times `CdcConsumer.drain()` into an empty lake (events/s) with
   `--fetch-processes` child processes, three times on the same topic: decode in the fetch processes with
   librdkafka (the default) and with kafka-python, then the old layout (kafka-python, raw records handed to
   the writing process, which decodes them: the writer-CPU peer); kafka-python's bare fetch is measured
   again after the drains, and the drain ratios use the mean of both. Prints the CPU microseconds per event of the
   fetch processes and of the writing process separately (on a shared machine the wall rate depends on the
   load, CPU per event much less), ratios to kafka-python's single-process bare fetch rate of the same run
   and to the old layout, and the load average beside every figure.
2. Starts `python -m ingestion.cdc.cli --follow` as a separate process on a second topic, produces at a
   steady `--rate` for `--seconds`, and measures each event's latency as the time of the Delta commit
   that holds it minus its Kafka timestamp (p50 / p99 / max). When the p99 misses 2 s, lower rates are
   tried until one holds it, and that rate is reported.
3. Drains a 12-partition topic (`--consumer-events`) with 1, 2 and 3 consumer processes (`--member i/N`,
   leases in Postgres: OPTIBID_DATABASE_URL or the embedded one), all writing the same bronze table.

Uses KAFKA_BOOTSTRAP_SERVERS or the embedded broker; produces with confluent-kafka. The follow and
consumer-process runs read with OPTIBID_CDC_CLIENT's client. Every embedded service it started is stopped
at the end, also on error (and on Ctrl-C).
Targets (issue 20): drain >= 1.5x the bare fetch rate, writer CPU per event 4x lower, p99 < 2 s at 20,000/s.
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from benchmarks.harness import load_average, stop_process, stopping_started_services
from infra.lake import Lake
from infra.services import embedded_broker_bootstrap, kafka_security_config, warehouse_url
from infra.settings import get_settings
from ingestion.cdc import CdcConsumer
from ingestion.cdc.decode import BatchContext, RawRecords, decode_records
from ingestion.cdc.delta import BronzeTables
from ingestion.cdc.topics import route_for
from ingestion.simulator.trading import ensure_topics, trading_events

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLLOW_P99_TARGET_S = 2.0


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
    bootstrap: str, security: dict, events: int, partitions: int, tmp: str, fetch_processes: int, existing_table: bool
) -> None:
    """Bare fetch with each client, then three drains of one topic in this run: decode in the fetch processes
    with librdkafka and with kafka-python, and the old layout (kafka-python, raw records handed to the writer,
    which decodes them: the writer-CPU peer), then kafka-python's bare fetch again. With `existing_table`
    each drain starts with the bronze table (and its columns) already there, as every drain after a topic's
    first does."""
    topic = f"bench{uuid.uuid4().hex[:6]}.public.bids"
    ensure_topics(bootstrap, [topic], partitions, security)
    t0 = time.perf_counter()
    sent = produce(bootstrap, topic, bid_events(events, seed=1))
    print(f"produced {sent:,} events to {topic} ({partitions} partitions) in {time.perf_counter() - t0:.1f}s")
    fetch_rate = raw_fetch_rate(bootstrap, security, topic, sent)
    raw_fetch_rate_librdkafka(bootstrap, security, topic, sent, fetch_rate)
    config = {"bootstrap_servers": bootstrap, **security}
    results = {}
    # The platform's default layout first, right after the bare fetch it is compared with.
    for name, client, decode_in_fetch in (
        ("librdkafka", "librdkafka", True),
        ("kafka-python", "kafka-python", True),
        ("old layout", "kafka-python", False),
    ):
        lake = Lake(f"{tmp}/drain-{name.replace(' ', '-')}")
        if existing_table:
            create_bronze_table(lake, topic)
        with CdcConsumer(
            lake, config, [topic], fetch_processes=fetch_processes, decode_in_fetch_processes=decode_in_fetch,
            client=client,
        ) as consumer:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            own0, children0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
            stats = consumer.drain()
            wall = time.perf_counter() - t0
            own = cpu_seconds(resource.RUSAGE_SELF) - own0
            children = cpu_seconds(resource.RUSAGE_CHILDREN) - children0  # the fetch processes, waited for
        rows = lake.table("bronze", "cdc__bids").to_pyarrow_dataset().count_rows()
        n = max(1, stats.events_read)
        rate, fetch_us, writer_us = stats.events_read / wall, 1e6 * children / n, 1e6 * own / n
        results[name] = (rate, writer_us)
        where = "in the fetch processes" if decode_in_fetch else "in the writer (raw handed over)"
        print(
            f"drain [{name}] {client}, {fetch_processes} fetch processes, decode {where}: {stats.events_read:,} "
            f"events read, {rows:,} bronze rows ({stats.events_decoded_in_fetch / n:.0%} decoded in the fetch "
            f"processes), {stats.dead_lettered} dead letters, {stats.batches} batches, {wall:.1f}s wall "
            f"-> {rate:,.0f} events/s = {rate / fetch_rate:.2f}x kafka-python's single-process bare fetch before it; "
            f"CPU us per event: fetch processes {fetch_us:.1f}, writer {writer_us:.1f} "
            f"(its one core bounds the rate at ~{1e6 / writer_us:,.0f}/s); "
            f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
        )
    # The machine's speed drifts within a run (the same code's CPU per event moved by 20 % between runs here):
    # the bare fetch is measured again after the drains, and they are compared with the mean of both.
    fetch_rate_after = raw_fetch_rate(bootstrap, security, topic, sent)
    bare = (fetch_rate + fetch_rate_after) / 2
    print(f"kafka-python bare fetch before / after the drains: {fetch_rate:,.0f} / {fetch_rate_after:,.0f} events/s, "
          f"mean {bare:,.0f}")
    old_rate, old_writer = results["old layout"]
    for name in ("kafka-python", "librdkafka"):
        rate, writer = results[name]
        print(
            f"{name} vs the old layout, same run: drain rate {rate / old_rate:.2f}x, writer CPU per event "
            f"{old_writer / writer:.1f}x lower ({old_writer:.1f} -> {writer:.1f} us; target >= 4x); drain / "
            f"kafka-python bare fetch (mean of before and after) {rate / bare:.2f} (target >= 1.5); {load_average()}"
        )


def create_bronze_table(lake: Lake, topic: str) -> None:
    """The topic's bronze table with its columns and no rows or offsets (what a first drain leaves behind)."""
    route = route_for(topic)
    raw = RawRecords(topic)
    for key, value in bid_events(10, seed=9):
        raw.partitions.append(0)
        raw.offsets.append(len(raw.offsets))
        raw.timestamps.append(0)
        raw.keys.append(key)
        raw.values.append(value)
    rows = decode_records(raw, route, {}, BatchContext("schema", datetime.now(UTC), {0: 0})).rows
    BronzeTables(lake).append(route.table, rows.slice(0, 0), topic_offsets={}, merge_schema=True)


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
    print(
        f"bare fetch (kafka-python, one process, no processing): {n / wall:,.0f} events/s, "
        f"{1e6 * cpu / n:.1f} CPU us per event; {load_average()}"
    )
    return n / wall


def raw_fetch_rate_librdkafka(bootstrap: str, security: dict, topic: str, expected: int, baseline: float) -> float:
    """The same bare fetch with librdkafka (confluent-kafka), for the record; the targets use kafka-python's."""
    from confluent_kafka import Consumer, TopicPartition

    from ingestion.cdc.clients import librdkafka_config

    config = librdkafka_config({"bootstrap_servers": bootstrap, **security})
    consumer = Consumer({**config, "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                         "queued.max.messages.kbytes": 32 << 10})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
    n, t0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    while n < expected:
        n += len(consumer.consume(num_messages=50_000, timeout=1.0))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    consumer.close()
    print(
        f"bare fetch (librdkafka, one process, no processing): {n / wall:,.0f} events/s "
        f"({n / wall / baseline:.2f}x kafka-python), {1e6 * cpu / n:.1f} CPU us per event; {load_average()}"
    )
    return n / wall


def bench_follow(bootstrap: str, security: dict, rate: int, seconds: int, tmp: str) -> None:
    """Follow mode at `rate`; when its p99 misses 2 s, lower rates until one holds it (the highest is reported)."""
    while True:
        p99 = follow_p99(bootstrap, security, rate, seconds, Lake(f"{tmp}/follow-{rate}"))
        if p99 < FOLLOW_P99_TARGET_S:
            print(f"follow: {rate:,} events/s holds a p99 under {FOLLOW_P99_TARGET_S:.0f} s; {load_average()}")
            return
        if rate <= 2_500:
            print(f"follow: no rate down to {rate:,} events/s holds a p99 under {FOLLOW_P99_TARGET_S:.0f} s")
            return
        rate = int(rate * 0.7 // 500 * 500)


def follow_p99(bootstrap: str, security: dict, rate: int, seconds: int, lake: Lake) -> float:
    """Produce at `rate` for `seconds` to a `--follow` consumer process; print latencies, return the p99."""
    topic = f"bench{uuid.uuid4().hex[:6]}.public.bids"
    ensure_topics(bootstrap, [topic], 6, security)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
         "--lake", lake.root, "--follow", "--batch-events", "50000", "--batch-seconds", "0.25"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # Consumer start-up (imports, metadata; tens of seconds on a loaded machine) is not latency: one
        # warm-up event must have landed before the measured stream starts.
        messages = list(bid_events(rate * seconds + 1, seed=2))
        produce(bootstrap, topic, messages[:1])
        deadline = time.monotonic() + 300
        while (lake.table("bronze", "cdc__bids") is None and time.monotonic() < deadline
               and proc.poll() is None):
            time.sleep(0.2)
        load = os.getloadavg()[0]
        measured_from_ms = time.time() * 1000
        sent = 1 + produce(bootstrap, topic, messages[1:], rate=rate)
        deadline = time.monotonic() + 30
        table = None
        while time.monotonic() < deadline:
            table = lake.table("bronze", "cdc__bids")
            if table is not None and table.to_pyarrow_dataset().count_rows() >= sent:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)  # commits the batch in hand, then exits
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"follow consumer failed: {err.decode()[-2000:]}")
    table = lake.table("bronze", "cdc__bids")
    commit_ms = {
        h["optibid.batch_id"]: h["timestamp"] for h in table.history() if "optibid.batch_id" in h
    }
    data = table.to_pyarrow_table(columns=["_batch_id", "_kafka_timestamp"])
    kafka_ms = pc.cast(data["_kafka_timestamp"], "int64").to_numpy() // 1000
    committed = np.array([commit_ms[b] for b in data["_batch_id"].to_pylist()])
    committed, kafka_ms = committed[kafka_ms >= measured_from_ms], kafka_ms[kafka_ms >= measured_from_ms]
    latency = (committed - kafka_ms) / 1000.0
    p99 = float(np.percentile(latency, 99))
    print(
        f"follow ({get_settings().cdc_client}): {sent:,} events at {rate:,}/s for {seconds}s -> {len(latency):,} of "
        "them in bronze, "
        f"{len(commit_ms)} commits; latency p50 {np.percentile(latency, 50):.3f}s, "
        f"p99 {p99:.3f}s (p99 / {FOLLOW_P99_TARGET_S:.0f} s = {p99 / FOLLOW_P99_TARGET_S:.2f}), "
        f"max {latency.max():.3f}s; load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"follow consumer summary: {json.loads(out.decode().strip().splitlines()[-1])}")
    return p99


def bench_consumers(bootstrap: str, security: dict, events: int, partitions: int, tmp: str, counts: list[int]) -> None:
    """Drain one topic with 1, 2, 3 ... consumer processes (`--member i/N`, each its own partitions, all writing
    the same bronze table), each count into a fresh lake; rates and ratios to the single process."""
    topic = f"bench{uuid.uuid4().hex[:6]}.public.bids"
    ensure_topics(bootstrap, [topic], partitions, security)
    sent = produce(bootstrap, topic, bid_events(events, seed=3))
    print(f"consumer processes: produced {sent:,} events to {topic} ({partitions} partitions); {load_average()}")
    env = {**os.environ, "OPTIBID_DATABASE_URL": warehouse_url(get_settings())}  # where the leases live
    single = None
    for count in counts:
        lake = Lake(f"{tmp}/members-{count}")
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
                 "--lake", lake.root, "--member", f"{i}/{count}", "--no-realtime"],
                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for i in range(count)
        ]
        try:
            outputs = [proc.communicate(timeout=1800) for proc in procs]
        finally:
            for proc in procs:
                stop_process(proc, 10)
        wall = time.perf_counter() - t0
        failed = [err.decode()[-1000:] for proc, (_, err) in zip(procs, outputs, strict=True) if proc.returncode]
        if failed:
            raise SystemExit(f"a consumer process failed: {failed[0]}")
        summaries = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        read = sum(s["events_read"] for s in summaries)
        rows = lake.table("bronze", "cdc__bids").to_pyarrow_dataset().count_rows()
        drain_s = max(s["seconds"] for s in summaries)  # the slowest member's drain, start-up excluded
        rate = read / drain_s
        single = single or rate
        print(
            f"  {count} consumer process(es): {read:,} events read, {rows:,} bronze rows, slowest drain {drain_s:.1f}s "
            f"-> {rate:,.0f} events/s = {rate / single:.2f}x one process; wall with start-up {wall:.1f}s "
            f"({read / wall:,.0f} events/s); load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=20_000, help="events/s produced during the follow test")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--fetch-processes", type=int, default=2, help="fetch processes of each drain")
    parser.add_argument("--consumer-events", type=int, default=300_000, help="events for the consumer-process runs")
    parser.add_argument("--consumer-processes", default="1,2,3", help="consumer process counts to compare ('' = skip)")
    parser.add_argument("--existing-table", action="store_true",
                        help="drain into a lake whose bronze table exists (steady state) rather than an empty one")
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--skip-follow", action="store_true")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C does, so the services this run started are still stopped; SIGINT raises
    # KeyboardInterrupt even when the run was started in the background (which inherits SIGINT ignored).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    settings = get_settings()
    with stopping_started_services(settings), tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
        bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
        security = kafka_security_config(settings)
        if not args.skip_drain:
            bench_drain(
                bootstrap, security, args.events, args.partitions, tmp, args.fetch_processes, args.existing_table
            )
        if not args.skip_follow:
            bench_follow(bootstrap, security, args.rate, args.seconds, tmp)
        if args.consumer_processes:
            counts = [int(c) for c in args.consumer_processes.split(",")]
            bench_consumers(bootstrap, security, args.consumer_events, 12, tmp, counts)

if __name__ == "__main__":
    main()
