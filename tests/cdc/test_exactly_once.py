"""Exactly once into bronze: back-to-back runs, replays, crashes (SIGKILL) and restarts.

Every check compares the (topic, partition, offset) set in bronze with what the broker acknowledged.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from infra.lake import Lake
from ingestion.cdc import CdcConsumer
from ingestion.cdc.delta import BronzeTables
from ingestion.simulator.trading import trading_events
from tests.cdc.conftest import bronze, coordinates, produce_with_values

REPO_ROOT = Path(__file__).resolve().parents[2]


def produce_simulated(producer, n: int, seed: int, *, partitions: int = 3) -> tuple[list[str], list]:
    """n simulated trading events over the four CDC topics of a fresh prefix; (topics, delivered)."""
    prefix = f"t{uuid.uuid4().hex[:10]}.public"
    by_topic: dict[str, list] = defaultdict(list)
    for event in trading_events(n, seed=seed, topic_prefix=prefix):
        by_topic[event.topic].append((event.key, event.value))
    delivered = []
    for topic, messages in by_topic.items():
        delivered += producer(topic, messages, partitions=partitions)
    return sorted(by_topic), delivered


def bronze_coordinates(lake: Lake, topics: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for topic in topics:
        out += coordinates(bronze(lake, f"cdc__{topic.rsplit('.', 1)[1]}"))
    return sorted(out)


def test_back_to_back_and_replayed_runs_write_each_event_once(cdc_client, producer, client_config, lake):
    topics, delivered = produce_simulated(producer, 1500, seed=11)
    with CdcConsumer(lake, client_config, topics, batch_max_events=400, client=cdc_client) as consumer:
        first = consumer.drain()
    assert first.events_read == len(delivered)
    assert first.dead_lettered == 0
    assert bronze_coordinates(lake, topics) == sorted(delivered)
    assert sum(p.lag for p in first.lag_after) == 0

    # A second run right after reads nothing; a fresh consumer (a "replay" of the topics) neither.
    with CdcConsumer(lake, client_config, topics, client=cdc_client) as consumer:
        assert consumer.drain().events_read == 0
    with CdcConsumer(lake, client_config, topics, batch_max_events=97, client=cdc_client) as consumer:
        assert consumer.drain().events_read == 0

    # New events after that land once as well, and only those are read.
    more = []
    for topic in topics:
        more += producer(topic, [(b'{"id":"x"}', None)], partitions=3)  # tombstones are events too
    with CdcConsumer(lake, client_config, topics, client=cdc_client) as consumer:
        again = consumer.drain()
    assert again.events_read == len(more)
    assert bronze_coordinates(lake, topics) == sorted(delivered + more)


def test_drain_with_fetch_processes_writes_each_event_once_with_dead_letters(
    cdc_client, broker_bootstrap, client_config, lake
):
    """Parallel fetch (each client in child processes): same rows, offsets and dead letters as in-process."""
    topic = f"t{uuid.uuid4().hex[:10]}.public.bids"
    events = [e for e in trading_events(600, seed=5) if e.topic.endswith(".bids")]
    messages = []
    for i, event in enumerate(events):
        messages.append((event.key, event.value))
        if i % 40 == 0:
            messages.append((b"k", b"{not json"))
    detailed = produce_with_values(broker_bootstrap, topic, messages, partitions=5)
    delivered = [(t, p, o) for t, p, o, _ in detailed]
    bad = {(t, p, o) for t, p, o, v in detailed if v == b"{not json"}
    with CdcConsumer(
        lake, client_config, [topic], batch_max_events=70, fetch_processes=2, client=cdc_client
    ) as consumer:
        stats = consumer.drain()
    assert stats.events_read == len(delivered)
    assert stats.dead_lettered == len(bad) > 0
    assert sum(p.lag for p in stats.lag_after) == 0
    rows = coordinates(bronze(lake, "cdc__bids"))
    assert coordinates(bronze(lake, "cdc__dead_letters")) == sorted(bad)
    assert sorted(rows + sorted(bad)) == sorted(delivered)
    # Offsets were committed with the rows: an in-process run and another parallel run read nothing.
    more = produce_with_values(broker_bootstrap, topic, [(b"k2", None)] * 4, partitions=5)
    with CdcConsumer(lake, client_config, [topic], fetch_processes=2, client=cdc_client) as consumer:
        again = consumer.drain()
    assert again.events_read == len(more)
    assert again.events_decoded_in_fetch == len(more)  # no new column: all of it reached the writer as Arrow
    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        assert consumer.drain().events_read == 0
    assert sorted(coordinates(bronze(lake, "cdc__bids")) + sorted(bad)) == sorted(
        delivered + [(t, p, o) for t, p, o, _ in more]
    )
    # Batches after the table existed came as Parquet files the fetch processes wrote: every row still
    # carries the batch id of the commit that added it.
    table = lake.table("bronze", "cdc__bids")
    committed = {h["optibid.batch_id"] for h in table.history() if "optibid.batch_id" in h}
    batch_ids = set(bronze(lake, "cdc__bids")["_batch_id"].to_pylist())
    assert batch_ids <= committed and any(".0" in b for b in batch_ids)  # "<run>-f<pid>.<n>": a fetch process's


def test_crash_between_dead_letter_and_row_commits_neither_loses_nor_duplicates(
    cdc_client, broker_bootstrap, client_config, lake
):
    """Deterministic crash point: the process dies after a batch's dead letters are committed."""
    topic = f"t{uuid.uuid4().hex[:10]}.public.bids"
    events = [e for e in trading_events(400, seed=3) if e.topic.endswith(".bids")]
    messages = []
    for i, event in enumerate(events):
        messages.append((event.key, event.value))
        if i % 25 == 0:
            messages.append((b"k", b"{not json"))
    detailed = produce_with_values(broker_bootstrap, topic, messages, partitions=2)
    delivered = [(t, p, o) for t, p, o, _ in detailed]
    bad = {(t, p, o) for t, p, o, v in detailed if v == b"{not json"}

    class Crash(BaseException):
        """Stands in for the process dying (not an Exception, so nothing catches it)."""

    real_append = BronzeTables.append
    data_commits = 0

    def dying_append(self, name, data, **kwargs):
        nonlocal data_commits
        if name == "cdc__bids":
            data_commits += 1
            if data_commits == 3:
                raise Crash
        return real_append(self, name, data, **kwargs)

    BronzeTables.append = dying_append
    try:
        with pytest.raises(Crash), CdcConsumer(
            lake, client_config, [topic], batch_max_events=60, client=cdc_client
        ) as consumer:
            consumer.drain()
    finally:
        BronzeTables.append = real_append
    dead_before = bronze(lake, "cdc__dead_letters").num_rows
    assert dead_before > 0
    # The dead-letter table is ahead of the rows now; the restart replays the batch.
    with CdcConsumer(lake, client_config, [topic], batch_max_events=45, client=cdc_client) as consumer:
        consumer.drain()
    rows = coordinates(bronze(lake, "cdc__bids"))
    dead = coordinates(bronze(lake, "cdc__dead_letters"))
    assert dead == sorted(bad)
    assert sorted(rows + dead) == sorted(delivered)


def _start_follow(bootstrap: str, lake: Lake, topic: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "ingestion.cdc.cli", "--topic", topic, "--bootstrap", bootstrap,
            "--lake", lake.root, "--batch-events", "150", "--batch-seconds", "0.05", "--follow",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_commits(lake: Lake, table: str, version: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dt = lake.table("bronze", table)
        if dt is not None and dt.version() >= version:
            return
        if proc.poll() is not None:
            raise AssertionError(f"consumer exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{table} did not reach version {version} within {timeout}s")


def test_sigkill_mid_batch_then_restart_is_exactly_once(
    cdc_client,
    producer,
    broker_bootstrap,
    client_config,
    lake,
    database_url,  # follow mode takes its lock in the warehouse
):
    topic = f"t{uuid.uuid4().hex[:10]}.public.trades"
    events = [e for e in trading_events(15000, seed=5) if e.topic.endswith(".trades")]
    messages = []
    for i, event in enumerate(events):
        messages.append((event.key, event.value))
        if i % 40 == 7:  # dead letters in most batches, so kills also land between the two commits
            messages.append((b"bad", b"\xff\xfe not utf-8"))
    delivered = producer(topic, messages, partitions=3)

    for kill_at_version in (3, 10):
        proc = _start_follow(broker_bootstrap, lake, topic)
        try:
            _wait_for_commits(lake, "cdc__trades", kill_at_version, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        rows = coordinates(bronze(lake, "cdc__trades"))
        assert len(rows) == len(set(rows)), "a killed consumer left duplicates"
        assert len(rows) < len(events), "the consumer finished before it was killed"

    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        consumer.drain()
    rows = coordinates(bronze(lake, "cdc__trades"))
    dead_table = bronze(lake, "cdc__dead_letters")
    dead = coordinates(dead_table)
    assert len(rows) == len(set(rows)) and len(dead) == len(set(dead))
    assert sorted(rows + dead) == sorted(delivered)
    assert set(dead_table["reason_code"].to_pylist()) == {"undecodable"}
    assert base64.b64decode(dead_table["value_b64"][0].as_py()) == b"\xff\xfe not utf-8"


def test_sigterm_in_follow_mode_commits_and_exits_cleanly(cdc_client, producer, broker_bootstrap, lake, database_url):
    topic = f"t{uuid.uuid4().hex[:10]}.public.assets"
    events = [e for e in trading_events(3000, seed=8) if e.topic.endswith(".assets")]
    first = producer(topic, [(e.key, e.value) for e in events[:40]], partitions=2)
    proc = _start_follow(broker_bootstrap, lake, topic)
    try:
        _wait_for_commits(lake, "cdc__assets", 0, proc)
        rest = producer(topic, [(e.key, e.value) for e in events[40:]], partitions=2)
        produced_at = time.monotonic()
        # Followed events reach bronze within seconds (the latency figure itself is a benchmark).
        while len(coordinates(bronze(lake, "cdc__assets"))) < len(first + rest):
            assert time.monotonic() - produced_at < 20, "followed events did not reach bronze"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"events_read"' in out
    assert coordinates(bronze(lake, "cdc__assets")) == sorted(first + rest)


def test_lag_is_reported_before_and_after(cdc_client, producer, client_config, lake):
    topic = f"t{uuid.uuid4().hex[:10]}.public.market_orders"
    events = [e for e in trading_events(600, seed=9) if e.topic.endswith(".market_orders")]
    delivered = producer(topic, [(e.key, e.value) for e in events], partitions=2)
    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        assert sum(p.lag for p in consumer.lag()) == len(delivered)
        stats = consumer.drain()
    assert sum(p.lag for p in stats.lag_before) == len(delivered)
    assert sum(p.lag for p in stats.lag_after) == 0


def test_follow_picks_up_a_topic_created_after_it_started(cdc_client, producer, client_config, lake):
    import threading

    first_topic = f"t{uuid.uuid4().hex[:10]}.public.bids"
    late_topic = first_topic.replace(".bids", ".trades")
    events = list(trading_events(400, seed=12))
    first = producer(first_topic, [(e.key, e.value) for e in events if e.topic.endswith(".bids")][:100])
    stop = threading.Event()
    consumer = CdcConsumer(lake, client_config, [first_topic, late_topic], batch_max_seconds=0.1, client=cdc_client)
    thread = threading.Thread(target=lambda: setattr(consumer, "result", consumer.follow(stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(coordinates(bronze(lake, "cdc__bids"))) < len(first) and time.monotonic() < deadline:
            time.sleep(0.05)  # the consumer is running before the second topic exists
        more_first = producer(first_topic, [(e.key, e.value) for e in events if e.topic.endswith(".bids")][100:])
        late = producer(late_topic, [(e.key, e.value) for e in events if e.topic.endswith(".trades")])
        deadline = time.monotonic() + 30
        while len(coordinates(bronze(lake, "cdc__trades"))) < len(late) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
        consumer.close()
    assert coordinates(bronze(lake, "cdc__bids")) == sorted(first + more_first)
    assert coordinates(bronze(lake, "cdc__trades")) == sorted(late)
    assert consumer.result.missing_topics == [late_topic]


def test_a_failing_fetch_process_fails_the_drain_and_commits_nothing(cdc_client, producer, client_config, lake):
    topic = f"t{uuid.uuid4().hex[:10]}.public.bids"
    events = [e for e in trading_events(200, seed=8) if e.topic.endswith(".bids")]
    producer(topic, [(e.key, e.value) for e in events], partitions=2)
    with CdcConsumer(lake, client_config, [topic], fetch_processes=2, client=cdc_client) as consumer:
        consumer.lag()  # the parent's own clients are connected; only the children get the dead address
        consumer._client_config = {**client_config, "bootstrap_servers": "127.0.0.1:1", "bootstrap_timeout_ms": 1000}
        with pytest.raises(RuntimeError, match="fetch process"):
            consumer.drain()
    assert lake.table("bronze", "cdc__bids") is None
    with CdcConsumer(lake, client_config, [topic], fetch_processes=2, client=cdc_client) as consumer:
        assert consumer.drain().events_read == len(events)
