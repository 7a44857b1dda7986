"""The batch fast path (msgspec + Arrow JSON) and the record-by-record path produce the same bronze rows."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ingestion.cdc.decode import BatchContext, RawRecords, _parse_envelopes_fast, decode_records
from ingestion.cdc.topics import route_for
from ingestion.simulator.trading import trading_events

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def test_a_batch_with_deletes_and_no_tombstones_takes_the_fast_path_and_agrees():
    events = [e for e in trading_events(3000, seed=22) if e.topic.endswith(".bids") and e.value is not None]
    route = route_for("optibid.public.bids")
    raw = _raw(events, route.topic)
    parsed = _parse_envelopes_fast(raw.values, route)
    assert parsed is not None, "well-formed envelopes are read by the batch path"
    assert "d" in parsed.ops and "c" in parsed.ops, "the sample should hold creates and deletes"
    ctx = BatchContext("b1", datetime(2025, 1, 1, tzinfo=UTC), {0: 0})
    fast = decode_records(raw, route, {}, ctx)
    bad = type(events[0])(route.topic, b"k", b"{broken")
    exact = decode_records(_raw([*events, bad], route.topic), route, {}, ctx)
    assert fast.rows.to_pylist() == exact.rows.to_pylist()
    deleted = [row for row in fast.rows.to_pylist() if row["op"] == "d"]
    assert deleted and all(row["after_json"] is None and row["before_json"].startswith("{") for row in deleted)


def test_a_type_conflict_in_a_fast_batch_dead_letters_its_record_and_keeps_the_others_as_sent():
    events = [e for e in trading_events(3000, seed=23) if e.topic.endswith(".bids") and e.value is not None]
    route = route_for("optibid.public.bids")
    head, after = events[5].value.split(b'"after":', 1)
    conflicting = head + b'"after":' + after.replace(b'"quantity_mw":', b'"quantity_mw":"lots","was":', 1)
    raw = _raw([*events[:5], type(events[5])(route.topic, events[5].key, conflicting), *events[6:]], route.topic)
    assert _parse_envelopes_fast(raw.values, route) is not None
    ctx = BatchContext("b1", datetime(2025, 1, 1, tzinfo=UTC), {0: 0})
    out = decode_records(raw, route, {"quantity_mw": "double"}, ctx)
    assert out.dead_letters.column("reason_code").to_pylist() == ["type_conflict"]
    assert out.dead_letters.column("_offset").to_pylist() == [5]
    assert out.rows.column("_offset").to_pylist() == [i for i in range(len(events)) if i != 5]
    sent = [e.value for i, e in enumerate(events) if i != 5]
    assert out.rows.column("payload_raw").to_pylist() == [v.decode() for v in sent]
    kept = [json.loads(v) for v in sent]
    after_texts = out.rows.column("after_json").to_pylist()
    assert [None if t is None else json.loads(t) for t in after_texts] == [doc["after"] for doc in kept]


def test_a_create_without_after_in_an_otherwise_clean_batch_is_dead_lettered_by_the_exact_path():
    events = [e for e in trading_events(3000, seed=24) if e.topic.endswith(".bids") and e.value is not None]
    route = route_for("optibid.public.bids")
    create = next(i for i, e in enumerate(events) if json.loads(e.value)["op"] == "c")
    doc = json.loads(events[create].value)
    doc["after"] = None
    emptied = type(events[create])(route.topic, events[create].key, json.dumps(doc).encode())
    raw = _raw([*events[:create], emptied, *events[create + 1:]], route.topic)
    assert _parse_envelopes_fast(raw.values, route) is None, "the batch path leaves it to the exact path"
    out = decode_records(raw, route, {}, BatchContext("b1", datetime(2025, 1, 1, tzinfo=UTC), {0: 0}))
    assert out.dead_letters.column("reason_code").to_pylist() == ["missing_field"]
    assert out.dead_letters.column("_offset").to_pylist() == [create]
    assert out.rows.num_rows == len(events) - 1


def test_a_batch_of_creates_with_pretty_printed_envelopes_agrees_with_the_exact_path():
    events = [
        e for e in trading_events(3000, seed=25)
        if e.topic.endswith(".bids") and e.value is not None and json.loads(e.value)["op"] != "d"
    ]
    # Two envelopes as a producer that indents its JSON sends them: newlines inside the `after` objects.
    for i, indent in ((3, 2), (-1, 1)):
        pretty = json.dumps(json.loads(events[i].value), indent=indent).encode()
        events[i] = type(events[i])(events[i].topic, events[i].key, pretty)
    route = route_for("optibid.public.bids")
    raw = _raw(events, route.topic)
    assert _parse_envelopes_fast(raw.values, route) is not None
    ctx = BatchContext("b1", datetime(2025, 1, 1, tzinfo=UTC), {0: 0})
    fast = decode_records(raw, route, {"price": "double", "status": "string"}, ctx)
    bad = type(events[0])(route.topic, b"k", b"{broken")
    exact = decode_records(_raw([*events, bad], route.topic), route, {"price": "double", "status": "string"}, ctx)
    assert fast.rows.num_rows == len(events) and fast.dead_letters.num_rows == 0
    flattened = [name for name in fast.rows.column_names if name in json.loads(events[0].value)["after"]]
    assert "price" in flattened and "quantity_mw" in flattened
    assert fast.rows.select(flattened).to_pylist() == exact.rows.select(flattened).to_pylist()
    assert fast.rows.column("price").to_pylist() == [json.loads(e.value)["after"]["price"] for e in events]


def test_a_fetch_process_decodes_and_writes_without_numpy_or_pandas(tmp_path):
    # The fetch process refuses both packages to start faster (ingestion.cdc.fetch_process): every decode path
    # and the Parquet write must work without them, and nothing it imports may need them.
    script = f"""
import json, sys
from datetime import UTC, datetime
from ingestion.cdc.fetch_process import _Unimportable
sys.meta_path.insert(0, _Unimportable)
from ingestion.cdc.decode import BatchContext, RawRecords, decode_records
from ingestion.cdc.fetch import write_parquet
from ingestion.cdc.topics import route_for
route = route_for("optibid.public.bids")
create = {{"op": "c", "source": {{"ts_ms": 1, "table": "bids", "lsn": 7}}, "before": None,
          "after": {{"bid_id": "b1", "price": 41.5, "quantity_mw": 3}}}}
delete = {{"op": "d", "source": {{"ts_ms": 2}}, "before": {{"bid_id": "b1"}}, "after": None}}
batches = {{
    "creates": [create, create],
    "deletes": [create, delete],
    "tombstone": [create, None],
    "dead letter": [create, {{"op": "x"}}],
    "type conflict": [create, {{**create, "after": {{"bid_id": "b2", "price": "high"}}}}],
}}
ctx = BatchContext("b", datetime(2025, 1, 1, tzinfo=UTC), {{0: 0}})
for name, docs in batches.items():
    values = [None if d is None else json.dumps(d).encode() for d in docs]
    raw = RawRecords(route.topic, [0] * len(docs), list(range(len(docs))), [0] * len(docs), [b"k"] * len(docs), values)
    out = decode_records(raw, route, {{"price": "double"}}, ctx)
    assert out.rows.num_rows + out.dead_letters.num_rows == len(docs), name
    write_parquet({str(tmp_path)!r}, out.rows)
loaded = sorted(m.partition(".")[0] for m in sys.modules)
assert "numpy" not in loaded and "pandas" not in loaded, loaded
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert len(list(tmp_path.glob("*.parquet"))) == 5
