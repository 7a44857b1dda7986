"""The fetch side of a parallel drain: a child process that reads assigned partition ranges with kafka-python.

Run as `python -m ingestion.cdc.fetch` by `consumer.CdcConsumer` (never by hand). It is deliberately light
(standard library + kafka-python): the child must not import the Arrow/Delta/pandas stack, nor re-run the
caller's `__main__` as `multiprocessing` spawn would, which cost ~15 s of start-up on the loaded 2-core box.
The parent stays the only writer; nothing here touches bronze.

Protocol: the plan comes as one JSON object on stdin. Each poll's records,
`{topic: (partitions, offsets, timestamps, keys, values)}`, are pickled into a file in the spool directory
(a RAM disk when there is one) and one JSON line announces it on stdout; tens of MB through a pipe would
cost hundreds of 64 KiB round trips, each waiting for the reader to be scheduled. The last line is
`{"kind": "done"}` or `{"kind": "error", ...}`.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from typing import Any


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
) -> None:
    """Fetch each (topic, partition, start, end) range up to `end` (exclusive); `announce(dict)` per poll."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **client_config, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=100, max_poll_records=max_records, allow_auto_create_topics=False, **fetch_options,
    )
    try:
        targets = {TopicPartition(topic, partition): end for topic, partition, _, end in plan}
        consumer.assign(list(targets))
        for topic, partition, start, _ in plan:
            consumer.seek(TopicPartition(topic, partition), start)
        remaining = set(targets)
        sequence = 0
        last_progress = time.monotonic()
        while remaining:
            polled = consumer.poll(timeout_ms=200, max_records=max_records)
            batch: dict[str, tuple[list, list, list, list, list]] = {}
            last: list[tuple[str, int, int]] = []
            for tp, records in polled.items():
                if records[-1].offset >= targets[tp]:
                    records = [r for r in records if r.offset < targets[tp]]
                if not records:
                    continue
                partitions, offsets, timestamps, keys, values = batch.setdefault(tp.topic, ([], [], [], [], []))
                partitions.extend([tp.partition] * len(records))
                offsets.extend([r.offset for r in records])
                timestamps.extend([r.timestamp for r in records])
                keys.extend([r.key for r in records])
                values.extend([r.value for r in records])
                last.append((tp.topic, tp.partition, records[-1].offset))
            if batch:
                sequence += 1
                path = os.path.join(spool, f"{os.getpid()}-{sequence}.pickle")
                with open(path, "wb") as out:
                    pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                announce({"kind": "records", "path": path, "last": last})
                last_progress = time.monotonic()
            for tp in list(remaining):
                if consumer.position(tp) >= targets[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if remaining and not polled and time.monotonic() - last_progress > stall_timeout_seconds:
                raise DrainStalledError(
                    f"no records for {stall_timeout_seconds:.0f}s before the high-water mark of "
                    f"{sorted(f'{tp.topic}[{tp.partition}]' for tp in remaining)}"
                )
    finally:
        consumer.close()


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
        )
    except Exception as exc:  # reported to the parent, which raises it and commits nothing further
        announce({"kind": "error", "type": type(exc).__name__, "message": str(exc)})
        sys.exit(1)
    announce({"kind": "done"})


if __name__ == "__main__":
    main()
