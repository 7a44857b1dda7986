"""The fetch side of a parallel drain: a child process that reads, decodes and writes assigned partition ranges.

Run as `python -m ingestion.cdc.fetch_process` by `consumer.CdcConsumer` (never by hand), reading with the client the
parent chose (`ingestion.cdc.clients`: librdkafka or kafka-python). Polls are gathered into batches of up to
`max_records` and decoded here (`ingestion.cdc.decode`). When the batch's tables exist and the lake is local,
the rows are written here as Parquet data files into the tables' directories, stamped with this batch's own
id; the parent's one writing process then only commits each file with the partitions' offsets (a file it
never commits is never read). Otherwise the rows go to the parent as Arrow (it stamps and writes them).

Decoding needs the bronze column types: the parent keeps them in a JSON file in the spool directory,
rewritten after every commit that added a column or took raw records, and the child re-reads it when it
changes. A batch whose decode would add a column is shipped raw instead and decoded by the parent against the
table's current types, so schema evolution is decided in one place, in commit order; the child then waits
for the types file to change, so that it decodes the following batches itself. Until a table exists its
batches are small (1,000 records) for the same reason. The child imports its Kafka client, pyarrow, msgspec
and orjson, never deltalake or pandas, and is a plain subprocess rather than a `multiprocessing` spawn (which
re-runs the caller's `__main__`: ~15 s of start-up on a loaded 2-core box).

Protocol: the plan comes as one JSON object on stdin. Each batch is pickled into a file in the spool
directory (a RAM disk when there is one) as `{"files": {topic: (file, size, stats, rows, dead_letters,
schema_changes, events, max_timestamp_ms)}, "piece_id": id}` or as `{"decoded": {topic: (rows_path,
dead_letters, schema_changes, events, max_timestamp_ms)}, "raw": {topic: (partitions, offsets, timestamps,
keys, values)}}`, where `rows_path` is an Arrow IPC file the parent memory-maps, and one JSON line announces
it on stdout; tens of MB through a pipe would cost hundreds of 64 KiB round trips, each waiting for the
reader to be scheduled. The last line is `{"kind": "done"}` or `{"kind": "error", ...}`.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ingestion.cdc.clients import Client, cut_at, open_reader
from ingestion.cdc.decode import JSON_DOCUMENT_COLUMNS, BatchContext, RawRecords, decode_records
from ingestion.cdc.topics import route_for

BATCH_MAX_SECONDS = 3.0  # a drain's batch ships at this age even when not full
COLUMN_TYPES_FILE = "column_types.json"  # in the spool: bronze table -> column -> Delta type, kept by the parent


class DrainStalledError(RuntimeError):
    """The broker stopped returning records before the high-water mark was reached."""


def fetch_partitions(
    client_config: dict[str, Any],
    plan: list[tuple[str, int, int, int]],
    max_records: int,
    fetch_options: dict[str, int],
    stall_timeout_seconds: float,
    spool: str,
    announce,
    epochs: dict[tuple[str, int], int] | None = None,
    decode: bool = True,
    client: Client = "kafka-python",
    table_dirs: dict[str, str] | None = None,
    run_id: str = "",
) -> None:
    """Fetch each (topic, partition, start, end) range up to `end` (exclusive) and decode it with the column
    types of `<spool>/column_types.json` and the partitions' offset `epochs`; `announce(dict)` per poll.
    `decode=False` ships every poll raw for the parent to decode (the layout before decoding moved here,
    kept as the benchmark's peer). `client` is the Kafka client to read with (`ingestion.cdc.clients`).
    `table_dirs` (bronze table -> local directory) are the tables this process may write Parquet files
    into for the parent to commit; batches are stamped `<run_id>-f<pid>.<sequence>`."""
    decoder = _Decoder(os.path.join(spool, COLUMN_TYPES_FILE), epochs or {}, table_dirs or {})
    reader = open_reader(client, client_config, max_records=max_records, **fetch_options)
    try:
        targets = {(topic, partition): end for topic, partition, _, end in plan}
        reader.assign({(topic, partition): start for topic, partition, start, _ in plan})
        remaining = set(targets)
        sequence = 0
        last_progress = time.monotonic()
        batch: dict[str, tuple[list, list, list, list, list]] = {}
        last: dict[tuple[str, int], int] = {}
        count, batch_started = 0, 0.0
        tables = {route_for(topic).table for topic, *_ in plan}
        while remaining or batch:
            # Until the parent has created every table (and published its column types) records can only go
            # to it raw, to be decoded there: small batches then, so that the tables exist early.
            limit = max_records if decoder.knows(tables) else min(max_records, 1_000)
            polled = reader.poll(limit - count, 0.2) if remaining else {}
            for tp, columns in polled.items():
                # The client may have fetched beyond the range (librdkafka prefetches): not this drain's.
                offsets, timestamps, keys, values = cut_at(columns, targets[tp])
                if not offsets:
                    continue
                partitions, all_offsets, all_timestamps, all_keys, all_values = batch.setdefault(
                    tp[0], ([], [], [], [], [])
                )
                partitions.extend([tp[1]] * len(offsets))
                all_offsets.extend(offsets)
                all_timestamps.extend(timestamps)
                all_keys.extend(keys)
                all_values.extend(values)
                last[tp] = offsets[-1]
                batch_started = batch_started or time.monotonic()
                count += len(offsets)
            for tp in list(remaining):
                if reader.position(tp) >= targets[tp]:
                    remaining.discard(tp)
                    reader.pause(tp)
            # Polls are gathered up to `max_records`: each batch is one commit when written as Parquet below,
            # and a commit costs the writer tens of ms whatever its size. A batch older than
            # BATCH_MAX_SECONDS ships anyway (a slow broker), as does a first small batch that a poll could
            # not fill (the parent is waiting for it to create the table).
            aged = time.monotonic() - batch_started >= BATCH_MAX_SECONDS
            if batch and (count >= limit or not remaining or aged or (limit < max_records and not polled)):
                sequence += 1
                path = os.path.join(spool, f"{os.getpid()}-{sequence}.pickle")
                piece_id = f"{run_id}-f{os.getpid()}.{sequence:06d}"
                with open(path, "wb") as out:
                    shipped = decoder.decode(batch, path, piece_id) if decode else {"raw": batch}
                    pickle.dump(shipped, out, protocol=pickle.HIGHEST_PROTOCOL)
                announce({"kind": "records", "path": path, "last": [(*tp, offset) for tp, offset in last.items()]})
                if shipped.get("raw") and decode:
                    decoder.wait_for_new_types()
                batch, last, count, batch_started = {}, {}, 0, 0.0
                last_progress = time.monotonic()
            if remaining and not polled and time.monotonic() - last_progress > stall_timeout_seconds:
                raise DrainStalledError(
                    f"no records for {stall_timeout_seconds:.0f}s before the high-water mark of "
                    f"{sorted(f'{topic}[{partition}]' for topic, partition in remaining)}"
                )
    finally:
        reader.close()


class _Decoder:
    """Turns one batch of raw records into bronze Parquet files or Arrow tables, or leaves them raw when a
    column would be added."""

    def __init__(self, types_path: str, epochs: dict[tuple[str, int], int], table_dirs: dict[str, str]) -> None:
        self.types_path, self.epochs, self.table_dirs = types_path, epochs, table_dirs
        self._types_version: tuple[int, int] | None = None
        self.column_types: dict[str, dict[str, str]] = {}

    def _refresh_types(self) -> None:
        stat = os.stat(self.types_path)  # the parent replaces the file (a new inode) atomically
        version = (stat.st_ino, stat.st_mtime_ns)
        if version != self._types_version:
            with open(self.types_path) as source:
                self.column_types = json.load(source)
            self._types_version = version

    def knows(self, tables: set[str]) -> bool:
        """Whether every one of `tables` exists (has published column types)."""
        self._refresh_types()
        return all(self.column_types.get(table) for table in tables)

    def wait_for_new_types(self, timeout: float = 5.0) -> None:
        """After shipping records raw because they add columns: give the parent the time to commit them and
        publish the new types, so that the following batches are decoded here rather than shipped raw too
        (with a fast client, a first drain would otherwise hand most of a topic to the writer undecoded)."""
        deadline = time.monotonic() + timeout
        before = self._types_version
        while time.monotonic() < deadline:
            stat = os.stat(self.types_path)
            if (stat.st_ino, stat.st_mtime_ns) != before:
                return
            time.sleep(0.02)

    def decode(self, batch: dict[str, tuple[list, list, list, list, list]], path: str, piece_id: str) -> dict:
        """The batch to ship, stamped `piece_id`. When every topic decodes without new columns into a table
        the parent allowed (`table_dirs`: an existing table of a local lake), the rows are written as
        Parquet files into the tables (`"files"`) and the parent only commits them; otherwise each topic's
        rows go to an Arrow IPC file `<path>.<n>.arrow` the parent maps (`"decoded"`) or stay raw (`"raw"`)."""
        self._refresh_types()
        now = datetime.now(UTC)
        outputs: dict[str, Any] = {}
        raw: dict[str, tuple] = {}
        for topic, (partitions, offsets, timestamps, keys, values) in batch.items():
            route = route_for(topic)
            records = RawRecords(topic, partitions, offsets, timestamps, keys, values)
            ctx = BatchContext(piece_id, now, {p: self.epochs.get((topic, p), 0) for p in set(partitions)})
            out = decode_records(records, route, self.column_types.get(route.table, {}), ctx)
            if out.new_columns:
                raw[topic] = (partitions, offsets, timestamps, keys, values)
            else:
                outputs[topic] = (route.table, out, len(offsets), max(timestamps))
        if not raw and all(self.column_types.get(t) and t in self.table_dirs for t, *_ in outputs.values()):
            files = {}
            for topic, (table, out, events, max_ts) in outputs.items():
                name, size, stats = write_parquet(self.table_dirs[table], out.rows)
                files[topic] = (name, size, stats, out.rows.num_rows, out.dead_letters, out.schema_changes, events,
                                max_ts)
            return {"files": files, "piece_id": piece_id}
        decoded = {}
        for topic, (_, out, events, max_ts) in outputs.items():
            rows_path = f"{path}.{len(decoded)}.arrow"
            with pa.OSFile(rows_path, "wb") as sink, pa.ipc.new_file(sink, out.rows.schema) as writer:
                writer.write_table(out.rows)
            decoded[topic] = (rows_path, out.dead_letters, out.schema_changes, events, max_ts)
        return {"decoded": decoded, "raw": raw}


def write_parquet(table_dir: str, rows: pa.Table) -> tuple[str, int, str]:
    """Write `rows` as a new data file of the Delta table at `table_dir` (not yet committed: until the parent
    commits it, no reader sees it); its name relative to the table, its size and its Delta stats JSON.

    Stats carry the row count, null counts and the min/max of integer columns (offsets, partitions, ids):
    what data skipping on lineage needs, without the string/timestamp truncation rules of other types."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    full = os.path.join(table_dir, name)
    # A dictionary page and min/max statistics of the whole-document JSON columns (one distinct value per row)
    # are work thrown away: the writer tries the dictionary until it overflows, and nobody prunes on JSON text.
    # Without them, a write of the bids topic's batch takes a quarter less CPU and a smaller file.
    compact = [column_name for column_name in rows.column_names if column_name not in JSON_DOCUMENT_COLUMNS]
    pq.write_table(rows, full, compression="snappy", use_dictionary=compact, write_statistics=compact)
    minimum, maximum = {}, {}
    for column_name, column in zip(rows.column_names, rows.columns, strict=True):
        if pa.types.is_integer(column.type) and column.null_count < len(column):
            bounds = pc.min_max(column)
            minimum[column_name], maximum[column_name] = bounds["min"].as_py(), bounds["max"].as_py()
    stats = {
        "numRecords": rows.num_rows, "minValues": minimum, "maxValues": maximum,
        "nullCount": {column_name: column.null_count for column_name, column in zip(
            rows.column_names, rows.columns, strict=True)},
    }
    return name, os.path.getsize(full), json.dumps(stats)


def main() -> None:
    job = json.loads(sys.stdin.read())
    # stdout carries the protocol only: anything else printing (a library, a warning) goes to stderr.
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def announce(message: dict) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    try:
        fetch_partitions(
            job["client_config"], [tuple(p) for p in job["plan"]], job["max_records"], job["fetch_options"],
            job["stall_timeout_seconds"], job["spool"], announce,
            {(topic, partition): epoch for topic, partition, epoch in job["epochs"]}, job["decode"],
            job.get("client", "kafka-python"), job.get("table_dirs", {}), job.get("run_id", ""),
        )
    except Exception as exc:  # reported to the parent, which raises it and commits nothing further
        announce({"kind": "error", "type": type(exc).__name__, "message": str(exc)})
        sys.exit(1)
    announce({"kind": "done"})


if __name__ == "__main__":
    main()
