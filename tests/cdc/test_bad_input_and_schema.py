"""Bad input lands in dead letters with its reason; schema evolution merges, type changes never cast."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa

from ingestion.cdc import CdcConsumer, dead_letters, schema_changes
from ingestion.simulator.trading import market_tick_events, trading_events
from tests.cdc.conftest import bronze, coordinates, produce_with_values, unique_topic


def envelope(op: str, after: dict | None, *, before: dict | None = None, ts_ms: int = 1_735_689_600_000,
             wrap: bool = False, **extra) -> bytes:
    payload = {"before": before, "after": after, "op": op, "ts_ms": ts_ms + 5,
               "source": {"ts_ms": ts_ms, "table": "bids", "lsn": 1000 + ts_ms % 1000, "txId": 7}, **extra}
    if wrap:
        return orjson.dumps({"schema": {"type": "struct", "fields": []}, "payload": payload})
    return orjson.dumps(payload)


def bid(i: int, **overrides) -> dict:
    return {"bid_id": f"b{i}", "org_id": "acme", "zone": "PJM", "price": 40.5 + i, "quantity_mw": 10.0,
            "status": "submitted", **overrides}


BAD_CASES: list[tuple[bytes | None, str, str]] = [
    (b"\xff\xfe\xfa garbage", "undecodable", "not UTF-8"),
    (b'{"op": "c", "after": {', "invalid_json", "not valid JSON"),
    (b"[1, 2, 3]", "missing_field", "not a Debezium envelope"),
    (orjson.dumps({"after": bid(90), "source": {"ts_ms": 1}}), "missing_field", "no `op`"),
    (envelope("x", bid(91)), "unknown_op", "unknown op 'x'"),
    (orjson.dumps({"op": "c", "after": bid(92), "source": {"table": "bids"}}), "missing_field", "source.ts_ms"),
    (envelope("c", None), "missing_field", "op=c has no `after`"),
    (envelope("d", None), "missing_field", "delete (op=d) has no `before`"),
    (envelope("u", bid(93, price="forty")), "type_conflict", "'price' of bronze.cdc__bids is double"),
]


def test_each_class_of_bad_input_is_dead_lettered_and_good_events_around_it_land(broker_bootstrap, client_config, lake):
    topic = unique_topic("bids")
    messages: list[tuple[bytes | None, bytes | None]] = []
    for i, (value, _, _) in enumerate(BAD_CASES):
        messages.append((f'{{"bid_id":"b{i}"}}'.encode(), envelope("c", bid(i))))
        messages.append((b'{"bid_id":"bad"}', value))
    messages.append((b'{"bid_id":"b0"}', envelope("d", None, before=bid(0), wrap=True)))  # schema-wrapped
    messages.append((b'{"bid_id":"b0"}', None))  # tombstone: a valid event
    delivered = produce_with_values(broker_bootstrap, topic, messages, partition=0, partitions=1)

    with CdcConsumer(lake, client_config, [topic]) as consumer:
        stats = consumer.drain()
    assert stats.events_read == len(messages)
    assert stats.dead_lettered == len(BAD_CASES)

    rows = bronze(lake, "cdc__bids").sort_by("_offset")
    assert rows.num_rows == len(BAD_CASES) + 2
    assert rows["op"].to_pylist() == ["c"] * len(BAD_CASES) + ["d", "t"]
    assert rows.schema.field("price").type == pa.float64()
    assert rows["bid_id"].to_pylist()[:3] == ["b0", "b1", "b2"]
    assert rows["key"].to_pylist()[-1] == '{"bid_id":"b0"}'

    dead = dead_letters(lake).sort_values("_offset")
    assert len(dead) == len(BAD_CASES)
    by_offset = {o: v for _, _, o, v in delivered}
    for (value, code, reason), (_, letter) in zip(BAD_CASES, dead.iterrows(), strict=True):
        assert letter["reason_code"] == code
        assert reason in letter["reason"], letter["reason"]
        assert base64.b64decode(letter["value_b64"]) == value == by_offset[letter["_offset"]]
        assert letter["_topic"] == topic and letter["target_table"] == "cdc__bids"
    assert dead_letters(lake, since=datetime.now(UTC) + timedelta(minutes=1)).empty
    assert sorted(coordinates(rows) + list(zip(dead._topic, dead._partition, dead._offset, strict=True))) == sorted(
        (t, p, o) for t, p, o, _ in delivered
    )


def test_market_ticks_land_typed_and_bad_ticks_are_dead_lettered(broker_bootstrap, client_config, lake):
    topic = f"{unique_topic('x')}.ticks"
    good = list(market_tick_events(50, seed=1, topic=topic))
    messages = [(e.key, e.value) for e in good]
    messages += [
        (b"z", orjson.dumps({"zone": "PJM", "ts_utc": "2025-01-01T00:00:00Z", "market": "RT"})),
        (b"z", orjson.dumps({**orjson.loads(good[0].value), "price": "12.5"})),
        (b"z", orjson.dumps({**orjson.loads(good[0].value), "ts_utc": "2025-01-01 00:00"})),
        (b"z", b"not json"),
    ]
    produce_with_values(broker_bootstrap, topic, messages, partitions=2)
    with CdcConsumer(lake, client_config, [topic]) as consumer:
        consumer.drain()
    ticks = bronze(lake, "ticks__prices")
    assert ticks.num_rows == 50
    assert ticks.schema.field("ts_utc").type == pa.timestamp("us", tz="UTC")
    assert ticks.schema.field("price").type == pa.float64()
    codes = sorted(dead_letters(lake)["reason_code"])
    assert codes == ["invalid_json", "missing_field", "schema_invalid", "schema_invalid"]


def test_new_nullable_column_is_merged_and_a_type_change_is_recorded_not_cast(
    broker_bootstrap, client_config, lake
):
    topic = unique_topic("assets")
    v1 = [(b'{"asset_id":"a1"}', envelope("r", {"asset_id": "a1", "capacity_mw": 100.0, "units": 2}))]
    produce_with_values(broker_bootstrap, topic, v1, partitions=1)
    with CdcConsumer(lake, client_config, [topic]) as consumer:
        consumer.drain()
    assert "ramp_rate" not in bronze(lake, "cdc__assets").column_names

    # The source added a nullable column (null in the first event, so its type comes from later ones).
    v2 = [
        (b'{"asset_id":"a2"}', envelope("c", {"asset_id": "a2", "capacity_mw": 50, "units": 1, "ramp_rate": None})),
        (b'{"asset_id":"a3"}', envelope("c", {"asset_id": "a3", "capacity_mw": 75.5, "units": 3, "ramp_rate": 4.5})),
        # ...and then changed the type of an existing column: integer units become text.
        (b'{"asset_id":"a4"}', envelope("u", {"asset_id": "a4", "capacity_mw": 80.0, "units": "three"})),
        (b'{"asset_id":"a5"}', envelope("u", {"asset_id": "a5", "capacity_mw": 81.0, "units": 2.5})),
    ]
    produce_with_values(broker_bootstrap, topic, v2, partitions=1)
    with CdcConsumer(lake, client_config, [topic]) as consumer:
        stats = consumer.drain()
    assert stats.tables["cdc__assets"].new_columns == ["ramp_rate"]

    rows = bronze(lake, "cdc__assets").sort_by("_offset")
    assert rows.schema.field("ramp_rate").type == pa.float64()
    assert rows.schema.field("units").type == pa.int64()  # unchanged: never a silent cast
    assert rows.schema.field("capacity_mw").type == pa.float64()  # a JSON 50 into a double column is fine
    assert rows.to_pydict()["asset_id"] == ["a1", "a2", "a3"]
    assert rows.to_pydict()["ramp_rate"] == [None, None, 4.5]

    dead = dead_letters(lake).sort_values("_offset")
    assert list(dead["reason_code"]) == ["type_conflict", "type_conflict"]
    assert "'units' of bronze.cdc__assets is long but the event has a string" in dead["reason"].iloc[0]
    assert "is long but the event has a double (2.5)" in dead["reason"].iloc[1]

    changes = schema_changes(lake).sort_values("_offset")
    assert list(zip(changes["column_name"], changes["change"], changes["old_type"], changes["new_type"],
                    strict=True)) == [
        ("asset_id", "column_added", "", "string"),  # first run: the table's columns appear
        ("capacity_mw", "column_added", "", "double"),
        ("units", "column_added", "", "long"),
        ("ramp_rate", "column_added", "", "double"),
        ("units", "type_conflict", "long", "string"),
        ("units", "type_conflict", "long", "double"),
    ]


def test_schema_wrapped_envelopes_use_declared_types(broker_bootstrap, client_config, lake):
    events = [e for e in trading_events(300, seed=4, with_schema=True) if e.topic.endswith(".market_orders")]
    topic = unique_topic("market_orders")
    produce_with_values(broker_bootstrap, topic, [(e.key, e.value) for e in events], partitions=2)
    with CdcConsumer(lake, client_config, [topic]) as consumer:
        stats = consumer.drain()
    assert stats.dead_lettered == 0
    rows = bronze(lake, "cdc__market_orders")
    assert rows.num_rows == len(events)
    # `price` is null for market orders: typed from the declared schema, not guessed.
    assert rows.schema.field("price").type == pa.float64()
    assert rows.schema.field("quantity_mw").type == pa.float64()
    assert all(key.startswith('{"order_id":"ord-') for key in rows["key"].to_pylist())  # wrapper stripped


def test_awkward_field_names_become_safe_columns(broker_bootstrap, client_config, lake):
    topic = unique_topic("bids")
    after = {"bid_id": "b1", "op": "shadowed", "unit price": 3.5, "_offset": 7}
    produce_with_values(broker_bootstrap, topic, [(b"k", envelope("c", after))], partitions=1)
    with CdcConsumer(lake, client_config, [topic]) as consumer:
        assert consumer.drain().rows_written == 1
    row = bronze(lake, "cdc__bids").to_pylist()[0]
    assert row["op"] == "c" and row["after_op"] == "shadowed"
    assert row["unit_price"] == 3.5 and row["after__offset"] == 7 and row["_offset"] == 0
