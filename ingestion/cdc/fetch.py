"""The fetch side of a parallel drain: a child process that reads and decodes assigned partition ranges.

Run as `python -m ingestion.cdc.fetch` by `consumer.CdcConsumer` (never by hand). Each poll is decoded here
(`ingestion.cdc.decode`) into the Arrow tables the parent commits, so the parent's one writing process only
stamps the batch id and commits. Decoding needs the bronze column types: the parent keeps them in a JSON
file in the spool directory, rewritten after every commit that added a column, and the child re-reads it
when it changes. A poll whose decode would add a column is shipped raw instead and decoded by the parent
against the table's current types, so schema evolution is decided in one place, in commit order (once the
parent has committed the column, the children decode those records themselves). The child imports
kafka-python, pyarrow, msgspec and orjson, never deltalake or pandas, and is a plain subprocess rather than
a `multiprocessing` spawn (which re-runs the caller's `__main__`: ~15 s of start-up on a loaded 2-core box).
Nothing here touches bronze.

Protocol: the plan comes as one JSON object on stdin. Each poll is pickled into a file in the spool
directory (a RAM disk when there is one) as `{"decoded": {topic: (rows_path, dead_letters, schema_changes,
events, max_timestamp_ms)}, "raw": {topic: (partitions, offsets, timestamps, keys, values)}}`, where
`rows_path` is an Arrow IPC file the parent memory-maps, and one JSON line announces it on stdout; tens of
MB through a pipe would cost hundreds of 64 KiB round trips, each waiting for the reader to be scheduled.
The last line is `{"kind": "done"}` or `{"kind": "error", ...}`.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ingestion.cdc.clients import Client, cut_at, open_reader
from ingestion.cdc.decode import BatchContext, RawRecords, decode_records
from ingestion.cdc.topics import route_for

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
) -> None:
    """Fetch each (topic, partition, start, end) range up to `end` (exclusive) and decode it with the column
    types of `<spool>/column_types.json` and the partitions' offset `epochs`; `announce(dict)` per poll.
    `decode=False` ships every poll raw for the parent to decode (the layout before decoding moved here,
    kept as the benchmark's peer). `client` is the Kafka client to read with (`ingestion.cdc.clients`)."""
    decoder = _Decoder(os.path.join(spool, COLUMN_TYPES_FILE), epochs or {})
    reader = open_reader(client, client_config, max_records=max_records, **fetch_options)
    try:
        targets = {(topic, partition): end for topic, partition, _, end in plan}
        reader.assign({(topic, partition): start for topic, partition, start, _ in plan})
        remaining = set(targets)
        sequence = 0
        last_progress = time.monotonic()
        while remaining:
            polled = reader.poll(max_records, 0.2)
            batch: dict[str, tuple[list, list, list, list, list]] = {}
            last: list[tuple[str, int, int]] = []
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
                last.append((*tp, offsets[-1]))
            if batch:
                sequence += 1
                path = os.path.join(spool, f"{os.getpid()}-{sequence}.pickle")
                with open(path, "wb") as out:
                    shipped = decoder.decode(batch, path) if decode else {"decoded": {}, "raw": batch}
                    pickle.dump(shipped, out, protocol=pickle.HIGHEST_PROTOCOL)
                announce({"kind": "records", "path": path, "last": last})
                last_progress = time.monotonic()
            for tp in list(remaining):
                if reader.position(tp) >= targets[tp]:
                    remaining.discard(tp)
                    reader.pause(tp)
            if remaining and not polled and time.monotonic() - last_progress > stall_timeout_seconds:
                raise DrainStalledError(
                    f"no records for {stall_timeout_seconds:.0f}s before the high-water mark of "
                    f"{sorted(f'{topic}[{partition}]' for topic, partition in remaining)}"
                )
    finally:
        reader.close()


class _Decoder:
    """Turns one poll's raw records into bronze Arrow tables, or leaves them raw when a column would be added."""

    def __init__(self, types_path: str, epochs: dict[tuple[str, int], int]) -> None:
        self.types_path, self.epochs = types_path, epochs
        self._types_version: tuple[int, int] | None = None
        self.column_types: dict[str, dict[str, str]] = {}

    def _refresh_types(self) -> None:
        stat = os.stat(self.types_path)  # the parent replaces the file (a new inode) atomically
        version = (stat.st_ino, stat.st_mtime_ns)
        if version != self._types_version:
            with open(self.types_path) as source:
                self.column_types = json.load(source)
            self._types_version = version

    def decode(self, batch: dict[str, tuple[list, list, list, list, list]], path: str) -> dict[str, dict]:
        """The poll to ship; each topic's rows go to an Arrow IPC file `<path>.<n>.arrow` (the parent maps it
        instead of copying it), named in place of the rows table."""
        self._refresh_types()
        decoded: dict[str, tuple] = {}
        raw: dict[str, tuple] = {}
        for topic, (partitions, offsets, timestamps, keys, values) in batch.items():
            route = route_for(topic)
            records = RawRecords(topic, partitions, offsets, timestamps, keys, values)
            # The parent overwrites _batch_id and _ingested_at with the values of the commit.
            ctx = BatchContext("", datetime.now(UTC), {p: self.epochs.get((topic, p), 0) for p in set(partitions)})
            out = decode_records(records, route, self.column_types.get(route.table, {}), ctx)
            if out.new_columns:
                raw[topic] = (partitions, offsets, timestamps, keys, values)
            else:
                rows_path = f"{path}.{len(decoded)}.arrow"
                with pa.OSFile(rows_path, "wb") as sink, pa.ipc.new_file(sink, out.rows.schema) as writer:
                    writer.write_table(out.rows)
                decoded[topic] = (rows_path, out.dead_letters, out.schema_changes, len(offsets), max(timestamps))
        return {"decoded": decoded, "raw": raw}


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
            job.get("client", "kafka-python"),
        )
    except Exception as exc:  # reported to the parent, which raises it and commits nothing further
        announce({"kind": "error", "type": type(exc).__name__, "message": str(exc)})
        sys.exit(1)
    announce({"kind": "done"})


if __name__ == "__main__":
    main()
