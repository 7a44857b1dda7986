"""The simulated trading system: deterministic, realistic lifecycles, and its producer round-trips."""

from __future__ import annotations

import uuid

import orjson

from ingestion.cdc import CdcConsumer
from ingestion.simulator.trading import market_tick_events, produce_events, trading_events
from tests.cdc.conftest import bronze


def test_same_seed_same_stream_and_lifecycles_hold():
    events = list(trading_events(4000, seed=7))
    assert events == list(trading_events(4000, seed=7))
    assert events != list(trading_events(4000, seed=8))

    bid_status: dict[str, str] = {}
    accepted: set[str] = set()
    for i, event in enumerate(events):
        if event.value is None:  # a tombstone directly follows the delete of the same key
            previous = orjson.loads(events[i - 1].value)
            assert previous["op"] == "d" and events[i - 1].key == event.key
            continue
        envelope = orjson.loads(event.value)
        table = event.topic.rsplit(".", 1)[1]
        assert envelope["source"]["table"] == table and isinstance(envelope["source"]["lsn"], int)
        row = envelope["after"] or envelope["before"]
        if table == "bids":
            if envelope["op"] == "c":
                assert row["status"] == "submitted" and row["bid_id"] not in bid_status
            elif envelope["op"] == "u":
                assert bid_status[row["bid_id"]] == "submitted" == envelope["before"]["status"]
                assert row["status"] in {"accepted", "partially_accepted", "rejected", "cancelled"}
                if row["status"] in {"accepted", "partially_accepted"}:
                    accepted.add(row["bid_id"])
            elif envelope["op"] == "d":
                assert bid_status[row["bid_id"]] == "cancelled"
            bid_status[row["bid_id"]] = row["status"]
        if table == "trades":
            assert row["bid_id"] in accepted
    sizes = [len(e.value) for e in events if e.value]
    assert 500 < sum(sizes) / len(sizes) < 1200  # Debezium-sized envelopes
    assert len(next(trading_events(1, seed=1, with_schema=True)).value) > 2000  # with the Connect schema


def test_simulated_prices_stay_within_each_zones_floor_and_cap():
    from ingestion.reference import ZONES_BY_CODE

    checked = 0
    for event in trading_events(60_000, seed=3):
        envelope = orjson.loads(event.value) if event.value else None
        row = envelope and envelope["after"]
        if not row or "zone" not in row:
            continue
        zone = ZONES_BY_CODE[row["zone"]]
        for column in ("price", "cleared_price"):
            if row.get(column) is not None:
                assert zone.price_floor <= row[column] <= zone.price_cap, (row, column)
                checked += 1
    assert checked > 30_000
    for tick in market_tick_events(20_000, seed=3):
        row = orjson.loads(tick.value)
        zone = ZONES_BY_CODE[row["zone"]]
        assert zone.price_floor <= row["price"] <= zone.price_cap, row


def test_produce_events_round_trips_through_the_consumer(broker_bootstrap, client_config, lake):
    prefix = f"t{uuid.uuid4().hex[:10]}.public"
    ticks_topic = f"{prefix}.ticks"
    events = [*trading_events(500, seed=2, topic_prefix=prefix), *market_tick_events(40, topic=ticks_topic)]
    counts = produce_events(broker_bootstrap, events, partitions=2)
    assert sum(counts.values()) == len(events)
    with CdcConsumer(lake, client_config, sorted(counts)) as consumer:
        stats = consumer.drain()
    assert stats.events_read == len(events) and stats.dead_lettered == 0
    for topic, n in counts.items():
        table = "ticks__prices" if topic == ticks_topic else f"cdc__{topic.rsplit('.', 1)[1]}"
        assert bronze(lake, table).num_rows == n
