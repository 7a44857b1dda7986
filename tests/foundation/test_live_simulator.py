"""The demo's live load: ticks and trading changes reach Kafka at the configured rate, stamped with the
present, and the current day's market files land with only the hours that have begun."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pandas as pd

from ingestion.simulator.live import LiveLoad, LiveSimulator, write_market_day_so_far


def _read_topic(bootstrap: str, topic: str) -> list:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_live_stream_produces_present_ticks_and_fresh_trading_ids(broker_bootstrap: str, tmp_path: Path) -> None:
    suffix = f"{time.time_ns()}"
    load = LiveLoad(
        ticks_per_second_per_zone=5,
        trading_events_per_second=10,
        ticks_topic=f"live_test_{suffix}.ticks",
        trading_topic_prefix=f"live_test_{suffix}.public",
    )
    started = datetime.now(UTC)
    simulator = LiveSimulator(broker_bootstrap, {}, tmp_path / "landing", date.today(), load)
    with simulator.start_stream():
        time.sleep(3)
    assert not simulator.counts.errors
    assert 7 * 5 * 2 <= simulator.counts.ticks <= 7 * 5 * 5, simulator.counts
    assert 20 <= simulator.counts.trading_events <= 50, simulator.counts

    ticks = [orjson.loads(r.value) for r in _read_topic(broker_bootstrap, load.ticks_topic)]
    assert len(ticks) == simulator.counts.ticks
    interval = started.replace(minute=started.minute - started.minute % 5, second=0, microsecond=0)
    assert {t["ts_utc"] for t in ticks} <= {
        interval.strftime("%Y-%m-%dT%H:%M:%SZ"),
        (interval + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert len({t["zone"] for t in ticks}) == 7

    bids = [orjson.loads(r.value) for r in _read_topic(broker_bootstrap, f"{load.trading_topic_prefix}.bids")]
    created = [b["after"]["bid_id"] for b in bids if b and b["op"] == "c"]
    # Ids start from the wall clock: a live session never reuses the ids of the history backfill (bid-000000001…).
    assert created and all(int(bid.split("-")[1]) > 10**12 for bid in created)
    # LSNs too: above any backfill's, so silver orders the live changes after the history.
    assert min(b["source"]["lsn"] for b in bids if b) > 10**14


def test_current_day_files_hold_only_the_hours_begun(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    history_start = now.date() - timedelta(days=2)
    written = write_market_day_so_far(history_start, tmp_path, now=now, nodes_per_zone=1)
    assert {p.name.split("_" + now.date().isoformat())[0] for p in written} == {
        "prices_hourly",
        "prices_5min",
        "load_hourly",
        "generation_hourly",
        "weather_hourly",
    }
    hourly = next(p for p in written if p.name.startswith("prices_hourly"))
    frame = {
        ".csv": pd.read_csv,
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".xlsx": pd.read_excel,
    }[hourly.suffix](hourly)
    column = "ts_utc (UTC)" if hourly.suffix == ".xlsx" else "ts_utc"
    stamps = pd.to_datetime(frame[column], utc=True)
    assert stamps.max() <= pd.Timestamp(now) and stamps.min().date() == now.date()
    assert stamps.dt.hour.nunique() == now.hour + 1
