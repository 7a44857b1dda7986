"""The batch fast path (msgspec + Arrow JSON) and the record-by-record path produce the same bronze rows."""

from __future__ import annotations

from datetime import UTC, datetime

from ingestion.cdc.decode import BatchContext, RawRecords, decode_records
from ingestion.cdc.topics import route_for
from ingestion.simulator.trading import trading_events


def _raw(events, topic: str) -> RawRecords:
    raw = RawRecords(topic)
    for offset, event in enumerate(events):
        raw.partitions.append(0)
        raw.offsets.append(offset)
        raw.timestamps.append(1_735_689_600_000 + offset)
        raw.keys.append(event.key)
        raw.values.append(event.value)
    return raw


def test_fast_and_exact_paths_agree_on_every_column():
    events = [e for e in trading_events(3000, seed=21) if e.topic.endswith(".bids")]
    assert any(e.value is None for e in events), "the sample should contain tombstones"
    route = route_for("optibid.public.bids")
    ctx = BatchContext("b1", datetime(2025, 1, 1, tzinfo=UTC), {0: 0})
    fast = decode_records(_raw(events, route.topic), route, {}, ctx)

    # One bad record sends the whole batch down the record-by-record path.
    bad = type(events[0])(route.topic, b"k", b"{broken")
    exact = decode_records(_raw([*events, bad], route.topic), route, {}, ctx)

    assert exact.dead_letters.num_rows == 1 and fast.dead_letters.num_rows == 0
    assert fast.rows.schema == exact.rows.schema
    assert fast.rows.to_pylist() == exact.rows.to_pylist()
    assert sorted(fast.new_columns) == sorted(exact.new_columns)
    assert sorted(fast.schema_changes.to_pylist(), key=str) == sorted(exact.schema_changes.to_pylist(), key=str)
