"""Decoding one topic's raw Kafka records into bronze Arrow tables, dead letters and schema changes.

Nothing here talks to Kafka or Delta: a `RawRecords` batch (parallel lists, as fetched) goes in, and a
`Decoded` comes out whose three parts are written by `ingestion.cdc.delta`. Every record ends up in
exactly one place: a bronze row or a dead letter with a reason code.

Typing rules for the flattened `after` columns (never a silent cast):
- a column already in the bronze table keeps its Delta type; JSON ints are accepted into double columns
  (JSON has one number type), anything else of another type is a `type_conflict` dead letter plus a
  schema-change event;
- a new column takes the type declared by the Kafka Connect `schema` wrapper when present, else the type
  of its first non-null value (ints and floats together make a double); it is added as nullable
  (additive merge) and recorded as a `column_added` schema change;
- nested objects and arrays are stored as JSON text.
"""

from __future__ import annotations

import base64
import io
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate
from typing import Any, NamedTuple

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from ingestion.cdc.topics import TopicRoute

DEBEZIUM_OPS = frozenset({"c", "u", "d", "r"})
TS_TYPE = pa.timestamp("us", tz="UTC")

# Bronze lineage columns shared by every Kafka-fed table (contract: docs/data_contracts.md).
LINEAGE_FIELDS = [
    pa.field("_topic", pa.string()),
    pa.field("_partition", pa.int32()),
    pa.field("_offset", pa.int64()),
    pa.field("_offset_epoch", pa.int32()),
    pa.field("_kafka_timestamp", TS_TYPE),
    pa.field("_ingested_at", TS_TYPE),
    pa.field("_batch_id", pa.string()),
]
CDC_FIELDS = [
    pa.field("op", pa.string()),
    pa.field("key", pa.string()),
    pa.field("source_ts_ms", pa.int64()),
    pa.field("source_lsn", pa.int64()),
    pa.field("source_tx_id", pa.int64()),
    pa.field("source_table", pa.string()),
    pa.field("before_json", pa.string()),
    pa.field("after_json", pa.string()),
    pa.field("payload_raw", pa.string()),
]
CDC_SCHEMA = pa.schema(CDC_FIELDS + LINEAGE_FIELDS)
JSON_DOCUMENT_COLUMNS = frozenset({"before_json", "after_json", "payload_raw"})  # one whole JSON document per row
RESERVED_COLUMNS = frozenset(CDC_SCHEMA.names)
TICK_FIELDS = [
    pa.field("zone", pa.string()),
    pa.field("node", pa.string()),
    pa.field("ts_utc", TS_TYPE),
    pa.field("market", pa.string()),
    pa.field("interval_minutes", pa.int64()),
    pa.field("price", pa.float64()),
    pa.field("currency", pa.string()),
]
TICKS_SCHEMA = pa.schema(TICK_FIELDS + LINEAGE_FIELDS)
DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("target_table", pa.string()),
        pa.field("reason_code", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("key_b64", pa.string()),
        pa.field("value_b64", pa.string()),
        *LINEAGE_FIELDS,
    ]
)
SCHEMA_CHANGE_SCHEMA = pa.schema(
    [
        pa.field("bronze_table", pa.string()),
        pa.field("column_name", pa.string()),
        pa.field("change", pa.string()),  # column_added | type_conflict
        pa.field("old_type", pa.string()),
        pa.field("new_type", pa.string()),
        pa.field("example_value", pa.string()),
        *LINEAGE_FIELDS,
    ]
)

# Delta primitive type -> (Arrow type, Python value types accepted without any conversion).
_DELTA_TYPES: dict[str, tuple[pa.DataType, frozenset[type]]] = {
    "long": (pa.int64(), frozenset({int})),
    "integer": (pa.int32(), frozenset({int})),
    "double": (pa.float64(), frozenset({float, int})),
    "float": (pa.float32(), frozenset({float, int})),
    "string": (pa.string(), frozenset({str, dict, list})),
    "boolean": (pa.bool_(), frozenset({bool})),
}
_PY_TO_DELTA = {int: "long", float: "double", str: "string", bool: "boolean", dict: "string", list: "string"}
_CONNECT_TO_DELTA = {
    "int8": "long",
    "int16": "long",
    "int32": "long",
    "int64": "long",
    "float32": "double",
    "float64": "double",
    "double": "double",
    "float": "double",
    "string": "string",
    "boolean": "boolean",
    "bytes": "string",
    "struct": "string",
    "array": "string",
    "map": "string",
}
_NONE = type(None)


@dataclass
class RawRecords:
    """Records of one topic as fetched (parallel lists; partitions may be mixed)."""

    topic: str
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # Kafka message timestamps, epoch ms
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class Decoded:
    """What one batch of one topic becomes."""

    rows: pa.Table
    dead_letters: pa.Table
    schema_changes: pa.Table
    new_columns: list[str]


@dataclass(frozen=True)
class BatchContext:
    """Lineage values stamped on every row of a batch."""

    batch_id: str
    ingested_at: datetime
    epochs: dict[int, int]  # partition -> offset epoch (bumped when the broker's offsets restarted)


class _DeadLetters:
    """Accumulates dead letters of one batch (rare, so plain lists are fine)."""

    def __init__(self, raw: RawRecords, table: str) -> None:
        self.raw, self.table = raw, table
        self.index: list[int] = []
        self.codes: list[str] = []
        self.reasons: list[str] = []

    def add(self, i: int, code: str, reason: str) -> None:
        self.index.append(i)
        self.codes.append(code)
        self.reasons.append(reason)

    def table_for(self, ctx: BatchContext) -> pa.Table:
        raw, idx = self.raw, self.index
        b64 = base64.b64encode
        return pa.Table.from_arrays(
            [
                pa.array([self.table] * len(idx), pa.string()),
                pa.array(self.codes, pa.string()),
                pa.array(self.reasons, pa.string()),
                pa.array([None if raw.keys[i] is None else b64(raw.keys[i]).decode() for i in idx], pa.string()),
                pa.array([None if raw.values[i] is None else b64(raw.values[i]).decode() for i in idx], pa.string()),
                *_lineage_arrays(raw, idx, ctx),
            ],
            schema=DEAD_LETTER_SCHEMA,
        )


def _unparsable(value: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    """Dead-letter reason of a value orjson refused: not UTF-8 at all, or text that is not JSON."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return "undecodable", f"value is not UTF-8 text ({uexc.reason} at byte {uexc.start})"
    return "invalid_json", f"value is not valid JSON: {exc}"


def decode_records(raw: RawRecords, route: TopicRoute, existing_types: dict[str, str], ctx: BatchContext) -> Decoded:
    """Decode one topic's batch for `route`; `existing_types` maps bronze columns to Delta type names."""
    if route.kind == "ticks":
        return _decode_ticks(raw, route, ctx)
    return _decode_debezium(raw, route, existing_types, ctx)


def _decode_debezium(raw: RawRecords, route: TopicRoute, existing: dict[str, str], ctx: BatchContext) -> Decoded:
    dead = _DeadLetters(raw, route.table)
    parsed = _parse_envelopes_fast(raw.values, route) or _parse_envelopes(raw.values, route, dead)
    good, ops, src_ts, lsns, tx_ids = parsed.good, parsed.ops, parsed.source_ts_ms, parsed.lsns, parsed.tx_ids
    src_tables, befores, after_jsons = parsed.source_tables, parsed.before_json, parsed.after_json
    after_array = parsed.after_array
    afters, declared = parsed.afters, parsed.declared_types
    dumps = orjson.dumps
    flat = _flatten_arrow(after_jsons, existing, declared) if afters is None else None
    if flat is not None:
        columns, types, new_columns, changes = flat
        bad: dict[int, tuple[str, str]] = {}
    else:
        if afters is None:
            afters = _DICTS.decode(b"[" + b",".join([a or b"{}" for a in after_jsons]) + b"]")
        columns, types, new_columns, changes, bad = _flatten(afters, existing, declared, route.table)
    decoded_index = list(good)  # schema changes name rows by their position among decoded envelopes
    if bad:
        keep = [j for j in range(len(good)) if j not in bad]
        for j, (code, reason) in sorted(bad.items()):
            dead.add(good[j], code, reason)
        good = [good[j] for j in keep]
        ops, src_ts, lsns, tx_ids, src_tables, befores, after_jsons = (
            col.take(pa.array(keep, pa.int64())) if isinstance(col, pa.Array) else [col[j] for j in keep]
            for col in (ops, src_ts, lsns, tx_ids, src_tables, befores, after_jsons)
        )
        columns = {name: [vals[j] for j in keep] for name, vals in columns.items()}
        if after_array is not None:
            after_array = after_array.take(pa.array(keep, pa.int64()))

    everything = len(good) == len(raw.values)
    values = raw.values if everything else [raw.values[i] for i in good]
    payload_raw = pa.array(values, pa.binary()) if None in values else _binary_column(values)
    arrays = [
        pa.array(ops, pa.string()),
        _key_array(raw.keys if everything else [raw.keys[i] for i in good]),
        pa.array(src_ts, pa.int64()),
        pa.array([v if type(v) is int else None for v in lsns], pa.int64()),
        pa.array([v if type(v) is int else None for v in tx_ids], pa.int64()),
        pa.array(src_tables, pa.string()),
        befores.cast(pa.string()) if isinstance(befores, pa.Array) else pa.array(befores, pa.string()),
        after_array if after_array is not None else pa.array(after_jsons, pa.string()),
        payload_raw.cast(pa.string()),  # UTF-8 was validated by the JSON decoders
        *_lineage_arrays(raw, good, ctx),
    ]
    fields = list(CDC_SCHEMA)
    position = {name: i for i, name in enumerate(existing)}
    ordered = sorted(columns, key=lambda name: position.get(name, len(position)))  # stable: new ones keep order
    for name in ordered:
        vals = columns[name]
        arrow_type = _DELTA_TYPES[types[name]][0]
        if isinstance(vals, pa.Array):
            arrays.append(vals.cast(arrow_type))
            fields.append(pa.field(name, arrow_type))
            continue
        if arrow_type == pa.string() and not {dict, list}.isdisjoint(map(type, vals)):
            vals = [dumps(v).decode() if type(v) in (dict, list) else v for v in vals]
        arrays.append(pa.array(vals, arrow_type))
        fields.append(pa.field(name, arrow_type))
    rows = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    changes_table = _schema_changes_table(route.table, [(decoded_index[c[0]], *c[1:]) for c in changes], raw, ctx)
    return Decoded(rows, dead.table_for(ctx), changes_table, new_columns)


class _ParsedEnvelopes(NamedTuple):
    """A batch's envelopes as parallel columns, one entry per decoded record (dead letters left out)."""

    good: list[int]  # indexes of the decoded records in the batch
    ops: list[str]  # c, u, d, r, or t for a tombstone
    source_ts_ms: list
    lsns: list
    tx_ids: list
    source_tables: list[str]
    before_json: list | pa.Array  # JSON text (or null) per record; an Arrow array from the fast path
    after_json: list  # JSON text, bytes or msgspec.Raw (or null) per record
    after_array: pa.Array | None  # `after_json` as an Arrow string column, when the fast path built it
    afters: list[dict] | None  # the decoded `after` objects; None when the fast path left them undecoded
    declared_types: dict[str, str]  # column -> type from the Kafka Connect `schema` wrapper, if any


def _parse_envelopes(values: list[bytes | None], route: TopicRoute, dead: _DeadLetters) -> _ParsedEnvelopes:
    """Record by record: every problem becomes a dead letter with its own reason."""
    loads, dumps = orjson.loads, orjson.dumps
    good: list[int] = []
    ops: list[str] = []
    src_ts: list[int | None] = []
    lsns: list[Any] = []
    tx_ids: list[Any] = []
    src_tables: list[str | None] = []
    befores: list[str | None] = []
    after_jsons: list[str | None] = []
    afters: list[dict] = []
    declared: dict[str, str] = {}
    empty: dict = {}
    for i, value in enumerate(values):
        if value is None:  # tombstone: the key's row is gone; log compaction may drop the key after this
            good.append(i)
            ops.append("t")
            src_ts.append(None)
            lsns.append(None)
            tx_ids.append(None)
            src_tables.append(route.source_table)
            befores.append(None)
            after_jsons.append(None)
            afters.append(empty)
            continue
        try:
            doc = loads(value)
        except orjson.JSONDecodeError as exc:
            dead.add(i, *_unparsable(value, exc))
            continue
        if type(doc) is not dict:
            dead.add(i, "missing_field", f"value is JSON {type(doc).__name__}, not a Debezium envelope object")
            continue
        payload = doc
        if "payload" in doc and "schema" in doc:
            payload = doc["payload"]
            if type(payload) is not dict:
                dead.add(i, "missing_field", "the `payload` of a schema-wrapped envelope is not an object")
                continue
            if not declared:
                declared = _declared_types(doc["schema"])
        op = payload.get("op")
        if op not in DEBEZIUM_OPS:
            if op is None:
                dead.add(i, "missing_field", "envelope has no `op` (expected c, u, d or r)")
            else:
                dead.add(i, "unknown_op", f"unknown op {str(op)[:40]!r} (expected c, u, d or r)")
            continue
        source = payload.get("source")
        if type(source) is not dict or type(source.get("ts_ms")) is not int:
            dead.add(i, "missing_field", "envelope has no integer `source.ts_ms`")
            continue
        after = payload.get("after")
        before = payload.get("before")
        if op == "d":
            if type(before) is not dict:
                dead.add(i, "missing_field", "delete (op=d) has no `before` object")
                continue
            after = None
        elif type(after) is not dict:
            dead.add(i, "missing_field", f"op={op} has no `after` object")
            continue
        good.append(i)
        ops.append(op)
        src_ts.append(source["ts_ms"])
        lsns.append(source.get("lsn"))
        tx_ids.append(source.get("txId"))
        src_tables.append(_table_name(source.get("table"), route))
        befores.append(None if before is None else dumps(before).decode())
        if after is None:
            after_jsons.append(None)
            afters.append(empty)
        else:
            after_jsons.append(dumps(after).decode())
            afters.append(after)

    return _ParsedEnvelopes(
        good=good,
        ops=ops,
        source_ts_ms=src_ts,
        lsns=lsns,
        tx_ids=tx_ids,
        source_tables=src_tables,
        before_json=befores,
        after_json=after_jsons,
        after_array=None,
        afters=afters,
        declared_types=declared,
    )


# gc=False: the envelopes hold no reference cycles, and tracking 100,000 of them per batch for the cyclic
# collector doubled the cost of their decode.
class _Source(msgspec.Struct, gc=False):
    ts_ms: int
    table: Any = None
    lsn: Any = None
    txId: Any = None


_NULL = msgspec.Raw(b"null")


class _Envelope(msgspec.Struct, gc=False):
    op: str
    source: _Source
    before: msgspec.Raw = _NULL
    after: msgspec.Raw = _NULL


class _Wrapped(msgspec.Struct, gc=False):
    schema: msgspec.Raw
    payload: _Envelope


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_NULL_BYTES = pa.scalar(b"null", pa.binary())
_NONE_BYTES = pa.scalar(None, pa.binary())
_WRAPPED_ONE = msgspec.json.Decoder(_Wrapped)
_DICTS = msgspec.json.Decoder(list[dict])


def _parse_envelopes_fast(values: list[bytes | None], route: TopicRoute) -> _ParsedEnvelopes | None:
    """The whole batch in two C-level decodes when every record is a well-formed envelope; else None.

    Any irregularity (bad bytes, missing fields, unknown ops, mixed wrapping) returns None and the batch is
    parsed record by record, so the fast path never decides what is a dead letter.
    """
    good = [i for i, v in enumerate(values) if v is not None]
    if not good:
        return None
    present = values if len(good) == len(values) else [values[i] for i in good]
    declared: dict[str, str] = {}
    # One decode per record rather than one of the joined batch: joining copies every byte twice (as much CPU
    # as the decode itself), and a value holding `{...},{...}` cannot pass for two records.
    try:
        envelopes = list(map(_ENVELOPE.decode, present))
    except (msgspec.ValidationError, msgspec.DecodeError):
        try:
            wrapped = list(map(_WRAPPED_ONE.decode, present))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        envelopes = [w.payload for w in wrapped]
        declared = _declared_types(orjson.loads(bytes(wrapped[0].schema)))
    ops_present = [e.op for e in envelopes]
    op_set = set(ops_present)
    if not op_set <= DEBEZIUM_OPS:
        return None
    # `before` and `after` stay msgspec.Raw slices of the values; each becomes one Arrow column by one join,
    # rather than a bytes copy per record and a conversion of the list.
    after_json: list = [e.after for e in envelopes]
    after_text = _binary_column(after_json)
    before_text = _binary_column([e.before for e in envelopes])
    objects = pc.starts_with(after_text, "{")
    # Every non-delete carries an `after` object and every delete a `before` object.
    if "d" in op_set:
        deleting = [op == "d" for op in ops_present]
        is_delete = pa.array(deleting, pa.bool_())
        if not pc.all(pc.xor(objects, is_delete)).as_py():
            return None
        if not pc.all(pc.starts_with(before_text.filter(is_delete), "{")).as_py():
            return None
        after_json = [None if gone else after for after, gone in zip(after_json, deleting, strict=True)]
        after_text = pc.if_else(is_delete, _NONE_BYTES, after_text)
    elif not pc.all(objects).as_py():
        return None
    before_json = pc.if_else(pc.equal(before_text, _NULL_BYTES), _NONE_BYTES, before_text)
    n = len(values)
    if len(good) == n:
        sources = [e.source for e in envelopes]
        tables = [s.table for s in sources]
        if set(map(type, tables)) != {str} or "" in tables:
            tables = [_table_name(t, route) for t in tables]
        return _ParsedEnvelopes(
            good=good,
            ops=ops_present,
            source_ts_ms=[s.ts_ms for s in sources],
            lsns=[s.lsn for s in sources],
            tx_ids=[s.txId for s in sources],
            source_tables=tables,
            before_json=before_json,
            after_json=after_json,
            after_array=after_text.cast(pa.string()),  # UTF-8 was validated by the JSON decoder
            afters=None,
            declared_types=declared,
        )
    before_json = before_json.to_pylist()
    # Tombstones among the envelopes: put every record back in its place.
    ops: list = ["t"] * n
    src_ts: list = [None] * n
    lsns: list = [None] * n
    tx_ids: list = [None] * n
    src_tables: list = [route.source_table] * n
    befores: list = [None] * n
    afters_json: list = [None] * n
    for j, i in enumerate(good):
        source = envelopes[j].source
        ops[i], src_ts[i], lsns[i], tx_ids[i] = ops_present[j], source.ts_ms, source.lsn, source.txId
        src_tables[i] = _table_name(source.table, route)
        befores[i] = before_json[j]
        afters_json[i] = None if after_json[j] is None else bytes(after_json[j])
    return _ParsedEnvelopes(
        good=list(range(n)),
        ops=ops,
        source_ts_ms=src_ts,
        lsns=lsns,
        tx_ids=tx_ids,
        source_tables=src_tables,
        before_json=befores,
        after_json=afters_json,
        after_array=None,
        afters=None,
        declared_types=declared,
    )


def _binary_column(docs: list) -> pa.Array:
    """Byte strings (bytes or msgspec.Raw, none of them None) as an Arrow binary array, made of one join and
    one offsets buffer."""
    offsets = array("q", accumulate(map(len, docs), initial=0))
    data = b"".join(docs)
    return pa.Array.from_buffers(
        pa.large_binary(), len(docs), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    ).cast(pa.binary())


def _table_name(value: Any, route: TopicRoute) -> str:
    return value if type(value) is str and value else route.source_table


def _flatten(
    afters: list[dict], existing: dict[str, str], declared: dict[str, str], table: str
) -> tuple[dict[str, list], dict[str, str], list[str], list[tuple[int, str, str, str, str, str]], dict[int, tuple]]:
    """Column lists of the `after` objects, their Delta types, new columns, schema changes, bad rows."""
    names: dict[str, None] = {}
    keysets = dict.fromkeys(map(tuple, afters))  # row shapes in order of first appearance
    for keyset in keysets:
        names.update(dict.fromkeys(keyset))
    by_name: dict[str, tuple] = {}
    keysets.pop((), None)
    if len(keysets) == 1:  # the usual case: one row shape, transposed in C instead of a lookup per cell
        (shape,) = keysets
        blank = (None,) * len(shape)
        by_name = dict(zip(shape, zip(*[a.values() if a else blank for a in afters], strict=True), strict=True))
    columns: dict[str, list] = {}
    types: dict[str, str] = {}
    new_columns: list[str] = []
    # (row index, column, change, old type, new type, example)
    changes: list[tuple[int, str, str, str, str, str]] = []
    bad: dict[int, tuple[str, str]] = {}
    for name in names:
        column = _column_name(name)
        vals = by_name[name] if name in by_name else [a.get(name) for a in afters]
        present = set(map(type, vals)) - {_NONE}
        delta_type = existing.get(column)
        is_new = delta_type is None
        if is_new:
            if not present and name not in declared:
                continue  # all null and undeclared: nothing to type it by yet; after_json keeps it
            delta_type = declared.get(name) or _first_value_type(vals, present)
        # A Delta type this ingester never writes (set by hand) accepts no value: each one is a conflict.
        allowed = _DELTA_TYPES[delta_type][1] if delta_type in _DELTA_TYPES else frozenset()
        if not present <= allowed:
            for j, v in enumerate(vals):
                if v is not None and type(v) not in allowed and j not in bad:
                    new_type = _PY_TO_DELTA.get(type(v), type(v).__name__)
                    example = orjson.dumps(v).decode()[:80]
                    bad[j] = (
                        "type_conflict",
                        f"column {column!r} of bronze.{table} is {delta_type} but the event has a "
                        f"{new_type} ({example}); type changes are not cast, fix the source or migrate the column",
                    )
                    changes.append((j, column, "type_conflict", delta_type, new_type, example))
        elif delta_type in ("long", "integer"):
            bad.update(_overflowing(vals, column, delta_type, table, bad))
        if delta_type not in _DELTA_TYPES:
            continue
        if is_new:
            new_columns.append(column)
            first = next((j for j, v in enumerate(vals) if v is not None), 0)
            changes.append((first, column, "column_added", "", delta_type, ""))
        columns[column] = vals
        types[column] = delta_type
    return columns, types, new_columns, changes, bad


_INVALID_IN_COLUMN = str.maketrans({c: "_" for c in " ,;{}()\n\t="})


def _column_name(field_name: str) -> str:
    """The bronze column of an `after` field: Delta-safe characters, never shadowing a lineage column."""
    column = field_name.translate(_INVALID_IN_COLUMN) or "_"
    return f"after_{column}" if column in RESERVED_COLUMNS else column


def _first_value_type(vals: list, present: set[type]) -> str:
    if present <= {int, float} and float in present:
        return "double"
    first = next(v for v in vals if v is not None)
    return _PY_TO_DELTA.get(type(first), "string")


def _overflowing(vals: list, column: str, delta_type: str, table: str, bad: dict) -> dict[int, tuple[str, str]]:
    limit = 2**63 if delta_type == "long" else 2**31
    return {
        j: ("type_conflict", f"column {column!r} of bronze.{table} is {delta_type} but {v} does not fit")
        for j, v in enumerate(vals)
        if v is not None and not -limit <= v < limit and j not in bad
    }


def _declared_types(schema: Any) -> dict[str, str]:
    """Delta types of the `after` fields declared in a Kafka Connect envelope schema."""
    if type(schema) is not dict:
        return {}
    for part in schema.get("fields") or []:
        if type(part) is dict and part.get("field") == "after":
            return {
                f["field"]: _CONNECT_TO_DELTA.get(f.get("type"), "string")
                for f in part.get("fields") or []
                if type(f) is dict and type(f.get("field")) is str
            }
    return {}


_ARROW_OF = {pa.int64(): "long", pa.float64(): "double", pa.string(): "string", pa.bool_(): "boolean"}


def _flatten_arrow(
    after_json: list, existing: dict[str, str], declared: dict[str, str]
) -> tuple[dict[str, pa.Array], dict[str, str], list[str], list[tuple[int, str, str, str, str, str]]] | None:
    """`after` columns read by Arrow's JSON reader (C++), or None when anything needs the exact path.

    Existing and declared columns are read with their type, so a value of another type makes the reader
    fail and the batch goes through `_flatten`, which attributes each conflict to its record.
    """
    # The bronze table's own columns (op, key, lineage) are not `after` fields: leave them out of the schema.
    existing = {name: t for name, t in existing.items() if name not in RESERVED_COLUMNS}
    text = b"\n".join([a or b"{}" for a in after_json])
    if text.count(b"\n") != len(after_json) - 1:
        return None  # pretty-printed JSON: line-delimited reading would split records
    known = {**declared, **existing}
    if any(name in RESERVED_COLUMNS for name in known):
        return None
    explicit = {name: _DELTA_TYPES[t][0] for name, t in known.items() if t in ("long", "double", "string", "boolean")}
    order: list[str] = []
    for _ in range(2):
        try:
            # One block holding the whole batch is parsed by one thread anyway: no pool to hand it to.
            table = pajson.read_json(
                io.BytesIO(text),
                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(text) + 1), use_threads=False),
                parse_options=pajson.ParseOptions(
                    explicit_schema=pa.schema(list(explicit.items())), unexpected_field_behavior="infer"
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        order = order or table.schema.names  # first appearance, as the record-by-record path orders them
        inferred_times = [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.name not in explicit]
        if not inferred_times:
            break
        explicit.update(dict.fromkeys(inferred_times, pa.string()))  # ISO text stays text in bronze
    else:
        return None
    table = table.select([name for name in order if name in table.schema.names])
    columns: dict[str, pa.Array] = {}
    types: dict[str, str] = {}
    new_columns: list[str] = []
    changes: list[tuple[int, str, str, str, str, str]] = []
    for fld, column in zip(table.schema, table.columns, strict=True):
        name = fld.name
        if _column_name(name) != name:
            return None
        if name in existing and existing[name] not in _DELTA_TYPES:
            return None
        if fld.type == pa.null():
            if name in existing or name in declared:
                return None  # let the exact path type it
            continue  # all null and undeclared: nothing to type it by yet
        delta_type = _ARROW_OF.get(fld.type)
        if delta_type is None:
            return None  # nested objects and arrays are stored as JSON text by the exact path
        if name in existing:
            delta_type = existing[name]
        elif name in declared:
            delta_type = declared[name]
        else:
            new_columns.append(name)
            first = pc.index(pc.is_valid(column), True).as_py()
            changes.append((max(first, 0), name, "column_added", "", delta_type, ""))
        if fld.type == pa.int64() and delta_type not in ("long", "double"):
            return None
        columns[name] = column.combine_chunks()
        types[name] = delta_type
    return columns, types, new_columns, changes


def _key_array(keys: list[bytes | None]) -> pa.Array:
    """Record keys as JSON text, the Kafka Connect schema wrapper reduced to its payload."""
    try:
        plain = pa.array(keys, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:  # a key that is not UTF-8: decode record by record, with replacement
        return pa.array([_key_text(k) for k in keys], pa.string())
    if pc.any(pc.starts_with(plain, '{"schema"')).as_py():
        return pa.array([_key_text(k) for k in keys], pa.string())
    return plain


def _key_text(key: bytes | None) -> str | None:
    """The record key as JSON text; the schema wrapper, when present, is reduced to its payload."""
    if key is None:
        return None
    if key.startswith(b'{"schema"'):
        try:
            doc = orjson.loads(key)
            return orjson.dumps(doc.get("payload")).decode()
        except (orjson.JSONDecodeError, AttributeError):
            pass
    return key.decode("utf-8", "replace")


def _lineage_arrays(raw: RawRecords, idx: list[int], ctx: BatchContext) -> list[pa.Array]:
    n = len(idx)
    everything = n == len(raw)
    parts = raw.partitions if everything else [raw.partitions[i] for i in idx]
    offsets = raw.offsets if everything else [raw.offsets[i] for i in idx]
    stamps = raw.timestamps if everything else [raw.timestamps[i] for i in idx]
    epochs = set(ctx.epochs.values())
    epoch = (
        _constant(next(iter(epochs)), pa.int32(), n)
        if len(epochs) <= 1 and epochs
        else pa.array([ctx.epochs.get(p, 0) for p in parts], pa.int32())
    )
    return [
        _constant(raw.topic, pa.string(), n),
        pa.array(parts, pa.int32()),
        pa.array(offsets, pa.int64()),
        epoch,
        pa.array(stamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(TS_TYPE),
        _constant(ctx.ingested_at, TS_TYPE, n),
        _constant(ctx.batch_id, pa.string(), n),
    ]


def _constant(value: Any, arrow_type: pa.DataType, n: int) -> pa.Array:
    """`value` n times, repeated by Arrow (a list of n datetimes costs ~0.4 µs per row to convert)."""
    return pa.repeat(pa.scalar(value, arrow_type), n)


def _schema_changes_table(
    table: str, changes: list[tuple[int, str, str, str, str, str]], raw: RawRecords, ctx: BatchContext
) -> pa.Table:
    """Schema-change events; each change's first element is the index of the record that caused it."""
    return pa.Table.from_arrays(
        [
            pa.array([table] * len(changes), pa.string()),
            pa.array([c[1] for c in changes], pa.string()),
            pa.array([c[2] for c in changes], pa.string()),
            pa.array([c[3] for c in changes], pa.string()),
            pa.array([c[4] for c in changes], pa.string()),
            pa.array([c[5] for c in changes], pa.string()),
            *_lineage_arrays(raw, [c[0] for c in changes], ctx),
        ],
        schema=SCHEMA_CHANGE_SCHEMA,
    )


def _decode_ticks(raw: RawRecords, route: TopicRoute, ctx: BatchContext) -> Decoded:
    dead = _DeadLetters(raw, route.table)
    good: list[int] = []
    cols: dict[str, list] = {f.name: [] for f in TICK_FIELDS}
    for i, value in enumerate(raw.values):
        if value is None:
            dead.add(i, "missing_field", "tick message has no value (tombstone on a tick topic)")
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            dead.add(i, *_unparsable(value, exc))
            continue
        problem = _tick_problem(doc)
        if problem:
            dead.add(i, *problem)
            continue
        ts = _parse_utc(doc["ts_utc"])
        if ts is None:
            dead.add(i, "schema_invalid", f"ts_utc {str(doc['ts_utc'])[:40]!r} is not an ISO-8601 time with offset")
            continue
        good.append(i)
        cols["zone"].append(doc["zone"])
        cols["node"].append(doc.get("node"))
        cols["ts_utc"].append(ts)
        cols["market"].append(doc["market"])
        cols["interval_minutes"].append(doc["interval_minutes"])
        cols["price"].append(doc["price"])
        cols["currency"].append(doc["currency"])
    arrays = [pa.array(cols[f.name], f.type) for f in TICK_FIELDS] + _lineage_arrays(raw, good, ctx)
    rows = pa.Table.from_arrays(arrays, schema=TICKS_SCHEMA)
    return Decoded(rows, dead.table_for(ctx), _schema_changes_table(route.table, [], raw, ctx), [])


_TICK_REQUIRED: dict[str, tuple[type, ...]] = {
    "zone": (str,),
    "ts_utc": (str,),
    "market": (str,),
    "interval_minutes": (int,),
    "price": (int, float),
    "currency": (str,),
}


def _tick_problem(doc: Any) -> tuple[str, str] | None:
    if type(doc) is not dict:
        return "schema_invalid", f"tick is JSON {type(doc).__name__}, not an object"
    for name, allowed in _TICK_REQUIRED.items():
        value = doc.get(name)
        if value is None:
            return "missing_field", f"tick has no `{name}`"
        if type(value) not in allowed:
            return "schema_invalid", f"tick `{name}` is {type(value).__name__} ({str(value)[:40]!r})"
    node = doc.get("node")
    if node is not None and type(node) is not str:
        return "schema_invalid", f"tick `node` is {type(node).__name__}"
    return None


def _parse_utc(text: str) -> datetime | None:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if ts.tzinfo is None else ts
