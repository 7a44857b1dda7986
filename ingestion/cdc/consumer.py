"""The Kafka → bronze consumer: assigned partitions, offsets kept in Delta, drain or follow.

`CdcConsumer` never joins a consumer group (group joins take ~20 s on tansu and offsets live in Delta
anyway): it assigns every partition of its topics, seeks each to one past the last offset committed to
the partition's bronze table, and commits micro-batches (by size or by age) where every table's append
carries the new offsets. `drain` stops at the high-water marks seen when it started; `follow` runs until
asked to stop and always finishes the batch in hand first.

The Kafka client is `client` (default: the `OPTIBID_CDC_CLIENT` setting): librdkafka (confluent-kafka)
or kafka-python, both behind `ingestion.cdc.clients`. With `fetch_processes=N` a drain splits the
partitions over N fetch processes (each its own client on assigned partitions) that also decode their
records and, into existing tables of a local lake, write them as Parquet data files (`ingestion.cdc.fetch`);
this process stays the only committer of the drain: it commits each file with its partitions' offsets in
the same commit (or stamps and writes what came as Arrow). Records whose decode would add a column come raw
and are decoded here, so schema evolution is decided in commit order, as in the in-process path.

With `leases` (`ingestion.cdc.leases`) the consumer is one member of a group of processes writing the same
tables: it reads only the partitions it leases and, in follow mode, takes over a dead member's partitions
from the offsets that member committed (concurrent commits: `ingestion.cdc.delta`).

An optional `row_sink` receives each topic's decoded rows of a micro-batch just before they are committed
(the real-time minute KPIs of `ingestion.cdc.realtime` hang off it in follow mode).

A broker whose offsets restarted (the embedded broker keeps topics in memory) shows up as a committed
offset beyond the high-water mark: by default the partition is re-read from its first offset under a new
`_offset_epoch` and a warning is logged and returned; `reset_policy="fail"` raises instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa

from infra.lake import Lake
from ingestion.cdc.clients import CLIENTS, TP, Client, Probe, Reader, cut_at, open_probe, open_reader
from ingestion.cdc.decode import TS_TYPE, BatchContext, Decoded, RawRecords, decode_records
from ingestion.cdc.delta import BronzeTables, filter_new
from ingestion.cdc.fetch import COLUMN_TYPES_FILE, DrainStalledError
from ingestion.cdc.leases import PartitionLeases
from ingestion.cdc.topics import BRONZE_LAYER, DEAD_LETTERS_TABLE, SCHEMA_CHANGES_TABLE, TopicRoute, route_for

_log = logging.getLogger(__name__)
_REPO_ROOT = Path(__file__).resolve().parents[2]  # children run `python -m ingestion.cdc.fetch_process` here


class OffsetResetError(RuntimeError):
    """The broker's offsets are behind what bronze already holds and the policy says to stop."""


@dataclass(frozen=True)
class PartitionLag:
    """Where one partition stands: next offset to ingest, broker watermarks and the lag between them."""

    topic: str
    partition: int
    next_offset: int
    low_watermark: int
    high_watermark: int
    epoch: int

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - max(self.next_offset, self.low_watermark))


@dataclass
class TableStats:
    """Per bronze table counts of one run."""

    events_read: int = 0
    rows_written: int = 0
    dead_lettered: int = 0
    schema_changes: int = 0
    commits: int = 0
    new_columns: list[str] = field(default_factory=list)


@dataclass
class IngestStats:
    """What a drain or follow run did."""

    tables: dict[str, TableStats] = field(default_factory=dict)
    batches: int = 0
    events_decoded_in_fetch: int = 0  # of a drain with fetch processes: events that reached the writer as Arrow
    seconds: float = 0.0
    lag_before: list[PartitionLag] = field(default_factory=list)
    lag_after: list[PartitionLag] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing_topics: list[str] = field(default_factory=list)

    def table(self, name: str) -> TableStats:
        return self.tables.setdefault(name, TableStats())

    @property
    def events_read(self) -> int:
        return sum(t.events_read for t in self.tables.values())

    @property
    def rows_written(self) -> int:
        return sum(t.rows_written for t in self.tables.values())

    @property
    def dead_lettered(self) -> int:
        return sum(t.dead_lettered for t in self.tables.values())

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class BatchReport:
    """Passed to `on_batch` after a micro-batch is committed (used for latency measurements)."""

    batch_id: str
    events: int
    committed_at: float  # time.time() after the last commit of the batch
    max_kafka_timestamp_ms: int


def total_lag(lags: Sequence[PartitionLag]) -> int:
    """Sum of the partitions' lags."""
    return sum(p.lag for p in lags)


def lag_by_topic(lags: Sequence[PartitionLag]) -> dict[str, int]:
    """Total lag per topic from per-partition lags."""
    out: dict[str, int] = {}
    for p in lags:
        out[p.topic] = out.get(p.topic, 0) + p.lag
    return out


class CdcConsumer:
    """Ingests Kafka topics into bronze Delta tables with exactly-once offsets (see module docstring)."""

    def __init__(
        self,
        lake: Lake,
        client_config: dict[str, object],
        topics: Sequence[str],
        *,
        batch_max_events: int = 50_000,
        batch_max_seconds: float = 1.0,
        reset_policy: Literal["earliest", "fail"] = "earliest",
        fetch_max_bytes: int = 64 * 1024 * 1024,
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
        stall_timeout_seconds: float = 30.0,
        fetch_processes: int = 0,
        decode_in_fetch_processes: bool = True,
        leases: PartitionLeases | None = None,
        row_sink: Callable[[TopicRoute, pa.Table], None] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        client: Client | None = None,
    ) -> None:
        self.lake = lake
        self.routes = {t: route_for(t) for t in topics}
        self.batch_max_events = batch_max_events
        self.batch_max_seconds = batch_max_seconds
        self.reset_policy = reset_policy
        self.stall_timeout_seconds = stall_timeout_seconds
        self.fetch_processes = fetch_processes
        self.decode_in_fetch_processes = decode_in_fetch_processes
        self.leases = leases
        self.row_sink = row_sink
        self._fetch_options = {
            "fetch_max_bytes": fetch_max_bytes, "max_partition_fetch_bytes": max_partition_fetch_bytes,
        }
        self.log = log or _log
        self.tables = BronzeTables(lake)
        self._client_config = client_config
        if client is None:
            from infra.settings import get_settings

            client = get_settings().cdc_client
        if client not in CLIENTS:
            raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(CLIENTS)}")
        self.client: Client = client
        # Both clients connect lazily: a drain with fetch processes never reads in this process.
        self._reader: Reader | None = None
        self._reader_follow = False
        self._probe_client: Probe | None = None
        self._epochs: dict[tuple[str, int], int] = {}
        self._seq = 0
        self._run_id = uuid.uuid4().hex[:12]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._probe_client is not None:
            self._probe_client.close()

    def _probe(self) -> Probe:
        """A second client for metadata and watermarks, so probing never moves the reader."""
        if self._probe_client is None:
            self._probe_client = open_probe(self.client, self._client_config)
        return self._probe_client

    def _open_reader(self, *, follow: bool) -> Reader:
        """The reader, tuned for latency (follow) or for throughput (drain)."""
        if self._reader is not None and self._reader_follow != follow:
            self._reader.close()
            self._reader = None
        if self._reader is None:
            self._reader = open_reader(
                self.client, self._client_config, max_records=self.batch_max_events, latency=follow,
                **self._fetch_options,
            )
            self._reader_follow = follow
        return self._reader

    def __enter__(self) -> CdcConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- positions --------------------------------------------------------------------------------

    def _partitions(self) -> list[TP]:
        return [(topic, p) for topic in self.routes for p in self._probe().partitions(topic)]

    def lag(self) -> list[PartitionLag]:
        """Current lag of every partition of the consumer's topics (committed offsets read from Delta)."""
        tables = BronzeTables(self.lake)  # a fresh snapshot; the commit thread keeps its own handles
        tps = self._partitions()
        if not tps:
            return []
        low = self._probe().low_watermarks(tps)
        # Confirmed by a fetch (`clients.Probe.high_watermarks`): tansu 0.6's ListOffsets(latest) is the base
        # offset of the last record batch, which would hide a partition's tail and fake "offsets restarted".
        high = self._probe().high_watermarks(tps)
        out = []
        for tp in tps:
            topic, partition = tp
            table = self.routes[topic].table
            last = tables.last_offset(table, topic, partition)
            out.append(
                PartitionLag(
                    topic, partition, 0 if last is None else last + 1, low[tp], high[tp],
                    tables.epoch(table, topic, partition),
                )
            )
        return out

    def _start_positions(self, stats: IngestStats, only: set | None = None) -> dict:
        """Next offset per partition, after handling restarted or truncated broker offsets."""
        stats.lag_before = self.lag()
        positions = {}
        for p in stats.lag_before:
            tp = self._tp(p)
            if only is not None and tp not in only:
                continue
            epoch, start = p.epoch, p.next_offset
            if p.next_offset > p.high_watermark:
                message = (
                    f"{p.topic}[{p.partition}]: bronze holds offsets up to {p.next_offset - 1} but the broker's "
                    f"high-water mark is {p.high_watermark}: the broker's offsets restarted (an in-memory or "
                    "recreated topic)."
                )
                if self.reset_policy == "fail":
                    raise OffsetResetError(message + " reset_policy='fail': not consuming this partition.")
                epoch, start = p.epoch + 1, p.low_watermark
                message += f" Re-reading from offset {start} as _offset_epoch {epoch}."
                self.log.warning(message)
                stats.warnings.append(message)
            elif p.next_offset < p.low_watermark:
                message = (
                    f"{p.topic}[{p.partition}]: offsets {p.next_offset}..{p.low_watermark - 1} were deleted by "
                    "broker retention before they were ingested; continuing at the first available offset."
                )
                self.log.warning(message)
                stats.warnings.append(message)
                start = p.low_watermark
            self._epochs[(p.topic, p.partition)] = epoch
            positions[tp] = start
        return positions

    # --- runs ---------------------------------------------------------------------------------------

    def drain(self) -> IngestStats:
        """Ingest every partition up to the high-water mark it had when the run started."""
        if self.fetch_processes > 0:
            return self._drain_with_fetch_processes()
        return self._run(follow=False, stop=None, on_batch=None)

    def follow(
        self, stop: threading.Event, on_batch: Callable[[BatchReport], None] | None = None
    ) -> IngestStats:
        """Ingest continuously until `stop` is set; the batch in hand is committed before returning."""
        return self._run(follow=True, stop=stop, on_batch=on_batch)

    def _run(
        self, *, follow: bool, stop: threading.Event | None, on_batch: Callable[[BatchReport], None] | None
    ) -> IngestStats:
        stats = IngestStats()
        started = time.monotonic()
        self.tables.refresh()  # another writer may have committed since this consumer last ran
        positions = self._owned(self._start_positions(stats), take_over=follow)
        stats.missing_topics = [t for t in self.routes if not any(p.topic == t for p in stats.lag_before)]
        for topic in stats.missing_topics:
            self.log.warning("topic %s does not exist on the broker (yet); nothing to ingest from it", topic)
        targets = {self._tp(p): p.high_watermark for p in stats.lag_before}
        active = [tp for tp in positions if follow or positions[tp] < targets[tp]]
        reader = self._open_reader(follow=follow)
        reader.assign({tp: positions[tp] for tp in active})
        # With leases, partitions freed by a dead member are looked for every second.
        discovery_seconds = 5.0 if self.leases is None else 1.0
        next_discovery = time.monotonic() + discovery_seconds
        remaining = set(active)
        committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-commit")
        in_flight: Future[BatchReport] | None = None

        def finish_commit() -> None:
            nonlocal in_flight
            if in_flight is None:
                return
            try:
                report = in_flight.result()
            except BaseException:
                committer.shutdown(wait=True)
                raise
            in_flight = None
            stats.batches += 1
            if on_batch is not None:
                on_batch(report)

        pending: dict[str, RawRecords] = {}
        last_offsets: dict[tuple[str, int], int] = {}
        count, batch_started, last_progress = 0, None, time.monotonic()
        while remaining or count or (follow and not stop.is_set()):
            stopping = stop is not None and stop.is_set()
            if follow and not stopping and time.monotonic() >= next_discovery:
                remaining |= self._assign_new_partitions(stats, remaining, finish_commit)
                next_discovery = time.monotonic() + discovery_seconds
            if remaining and not stopping:
                polled = reader.poll(self.batch_max_events - count, 0.05 if follow else 0.2)
            else:
                polled = {}
                if follow and not stopping and not count:
                    stop.wait(0.2)  # no partitions yet: wait for topics to appear
            for tp, columns in polled.items():
                offsets, timestamps, keys, values = columns if follow else cut_at(columns, targets[tp])
                if offsets:
                    raw = pending.setdefault(tp[0], RawRecords(tp[0]))
                    raw.partitions.extend([tp[1]] * len(offsets))
                    raw.offsets.extend(offsets)
                    raw.timestamps.extend(timestamps)
                    raw.keys.extend(keys)
                    raw.values.extend(values)
                    last_offsets[tp] = offsets[-1]
                    count += len(offsets)
                    batch_started = batch_started or time.monotonic()
                    last_progress = time.monotonic()
            if not follow:
                for tp in list(remaining):
                    if reader.position(tp) >= targets[tp]:
                        remaining.discard(tp)
                        reader.pause(tp)
                if remaining and not polled and time.monotonic() - last_progress > self.stall_timeout_seconds:
                    raise DrainStalledError(
                        f"no records for {self.stall_timeout_seconds:.0f}s before the high-water mark of "
                        f"{sorted(f'{topic}[{partition}]' for topic, partition in remaining)}"
                    )
            full = count >= self.batch_max_events
            # Age only bounds latency when following; a drain batches by size (fewer, larger commits).
            aged = (
                follow and batch_started is not None and time.monotonic() - batch_started >= self.batch_max_seconds
            )
            if count and (full or aged or not remaining or stopping):
                # One batch commits in the background while the next is fetched (Delta writes and Arrow
                # parsing release the GIL); batches still commit one at a time and in order.
                finish_commit()
                in_flight = committer.submit(self._commit, pending, last_offsets, stats)
                pending, last_offsets, count, batch_started = {}, {}, 0, None
            if stopping and not count:
                break
        finish_commit()
        committer.shutdown()
        stats.seconds = time.monotonic() - started
        stats.lag_after = self._owned_lag()
        return stats

    def _drain_with_fetch_processes(self) -> IngestStats:
        """`drain` with the client fetching in `fetch_processes` child processes (see module docstring).

        Each child (`python -m ingestion.cdc.fetch_process`) owns a disjoint set of partitions and announces its
        polls in offset order; batches are formed and committed here exactly as in `_run`, one at a time.
        """
        stats = IngestStats()
        started = time.monotonic()
        # The processes start first: their imports (~1 s) overlap the probing below; each waits for its plan
        # on stdin, and the ones without work are stopped unused.
        spawned = [
            subprocess.Popen(
                [sys.executable, "-m", "ingestion.cdc.fetch_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_REPO_ROOT, text=True,
            )
            for _ in range(self.fetch_processes)
        ]
        try:
            self.tables.refresh()
            positions = self._owned(self._start_positions(stats), take_over=False)
        except BaseException:
            for child in spawned:
                child.kill()
                child.wait()
            raise
        stats.missing_topics = [t for t in self.routes if not any(p.topic == t for p in stats.lag_before)]
        for topic in stats.missing_topics:
            self.log.warning("topic %s does not exist on the broker (yet); nothing to ingest from it", topic)
        targets = {self._tp(p): p.high_watermark for p in stats.lag_before}
        work = sorted(
            ((tp, positions[tp], targets[tp]) for tp in positions if positions[tp] < targets[tp]),
            key=lambda w: w[1] - w[2],  # largest lag first, so the greedy split below balances the children
        )
        plans: list[list[tuple[str, int, int, int]]] = [[] for _ in range(min(self.fetch_processes, len(work)))]
        load = [0] * len(plans)
        for tp, start, end in work:
            i = load.index(min(load))
            plans[i].append((*tp, start, end))
            load[i] += end - start
        for child in spawned[len(plans):]:
            child.kill()
            child.wait()
        spool = tempfile.mkdtemp(prefix="cdc-drain-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        types_path = os.path.join(spool, COLUMN_TYPES_FILE)
        inbox: queue.Queue[tuple[int, dict | None]] = queue.Queue(maxsize=2 * max(1, len(plans)))
        children: list[subprocess.Popen] = spawned[: len(plans)]
        readers: list[threading.Thread] = []
        committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-commit")
        in_flight: Future[BatchReport] | None = None
        pending: dict[str, RawRecords] = {}
        predecoded: dict[str, list[_Predecoded]] = {}
        last_offsets: dict[tuple[str, int], int] = {}
        count = 0

        def await_in_flight() -> None:
            """Batches commit one at a time and in order: the next is submitted once this one is done."""
            nonlocal in_flight
            if in_flight is not None:
                in_flight.result()
                stats.batches += 1
                in_flight = None

        def commit_pending() -> None:
            nonlocal in_flight, pending, predecoded, last_offsets, count
            await_in_flight()
            in_flight = committer.submit(self._commit, pending, last_offsets, stats, predecoded, types_path)
            pending, predecoded, last_offsets, count = {}, {}, {}, 0

        try:
            self._publish_column_types(types_path)
            # Fetch processes may write Parquet files straight into the tables of a local lake: the commit
            # is then all that is left here. Not with a row sink, which needs the rows in this process.
            table_dirs = (
                {route.table: self.lake.table_uri(BRONZE_LAYER, route.table).removeprefix("file://")
                 for route in self.routes.values()}
                if self.lake.is_local and self.row_sink is None and self.decode_in_fetch_processes
                else {}
            )
            epochs = [[topic, partition, epoch] for (topic, partition), epoch in self._epochs.items()]
            for i, plan in enumerate(plans):
                child = spawned[i]
                job = {
                    "client_config": self._client_config, "plan": plan, "max_records": self.batch_max_events,
                    "fetch_options": self._fetch_options, "stall_timeout_seconds": self.stall_timeout_seconds,
                    "spool": spool, "epochs": epochs, "decode": self.decode_in_fetch_processes,
                    "client": self.client, "table_dirs": table_dirs, "run_id": self._run_id,
                }
                child.stdin.write(json.dumps(job))
                child.stdin.close()
                reader = threading.Thread(target=_relay, args=(i, child, inbox), daemon=True)
                reader.start()
                readers.append(reader)
            running = len(children)
            while running or count:
                message = None
                if running:
                    i, message = inbox.get()
                    if message is None:  # stdout closed without "done" or "error"
                        code = children[i].wait()
                        raise RuntimeError(f"fetch process {i} ended (exit code {code}) before its last offsets")
                    if message["kind"] == "error":
                        error = DrainStalledError if message["type"] == "DrainStalledError" else RuntimeError
                        raise error(f"fetch process {i}: {message['type']}: {message['message']}")
                    if message["kind"] == "done":
                        running -= 1
                    else:
                        with open(message["path"], "rb") as spooled:
                            polled = pickle.load(spooled)  # written by our own child process
                        os.unlink(message["path"])
                        if polled.get("files"):
                            # Written into the tables already: committed on its own, after whatever came
                            # before it (the same partitions' earlier offsets may be in the pending batch).
                            if count:
                                commit_pending()
                            await_in_flight()
                            piece_offsets = {(topic, partition): offset for topic, partition, offset in message["last"]}
                            in_flight = committer.submit(
                                self._commit_files, polled["piece_id"], polled["files"], piece_offsets, stats
                            )
                            stats.events_decoded_in_fetch += sum(f[6] for f in polled["files"].values())
                            continue
                        for topic, (rows_path, *piece) in polled.get("decoded", {}).items():
                            # Mapped, not read: the pages stay valid after the unlink, until the batch is gone.
                            with pa.memory_map(rows_path) as source:
                                rows = pa.ipc.open_file(source).read_all()
                            os.unlink(rows_path)
                            decoded_piece = _Predecoded(rows, *piece)
                            predecoded.setdefault(topic, []).append(decoded_piece)
                            count += decoded_piece.events
                            stats.events_decoded_in_fetch += decoded_piece.events
                        for topic, (partitions, offs, timestamps, keys, values) in polled.get("raw", {}).items():
                            into = pending.setdefault(topic, RawRecords(topic))
                            into.partitions.extend(partitions)
                            into.offsets.extend(offs)
                            into.timestamps.extend(timestamps)
                            into.keys.extend(keys)
                            into.values.extend(values)
                            count += len(offs)
                        for topic, partition, offset in message["last"]:
                            last_offsets[(topic, partition)] = offset
                # Raw records mean new columns: commit them as soon as the writer is free, so that the fetch
                # processes learn the new column types early and decode the rest themselves. (Not in the old
                # layout, where everything comes raw: there batches are formed by size.)
                idle = in_flight is None or in_flight.done()
                early = pending and idle and self.decode_in_fetch_processes
                if count and (count >= self.batch_max_events or not running or early):
                    commit_pending()
            await_in_flight()
        finally:
            committer.shutdown(wait=True)
            for child in children:
                if child.poll() is None:
                    child.kill()  # only after an error: nothing it fetched is committed any more
                child.wait()
            while any(reader.is_alive() for reader in readers):  # unblock relays stuck on a full inbox
                with contextlib.suppress(queue.Empty):
                    inbox.get(timeout=0.1)
            shutil.rmtree(spool, ignore_errors=True)
        stats.seconds = time.monotonic() - started
        stats.lag_after = self._owned_lag()
        return stats

    def _publish_column_types(self, path: str) -> None:
        """Write every target table's column types for the fetch processes (atomically: they may be reading)."""
        types = {route.table: self.tables.column_types(route.table) for route in self.routes.values()}
        with open(path + ".tmp", "w") as out:
            json.dump(types, out)
        os.replace(path + ".tmp", path)

    def _owned(self, positions: dict, *, take_over: bool) -> dict:
        """`positions` restricted to the partitions this member leases (all of them without leases)."""
        if self.leases is None:
            return positions
        self.leases.claim(list(positions), take_over=take_over)
        return {tp: offset for tp, offset in positions.items() if tp in self.leases.held}

    def _owned_lag(self) -> list[PartitionLag]:
        lags = self.lag()
        if self.leases is None:
            return lags
        return [p for p in lags if (p.topic, p.partition) in self.leases.held]

    def _assign_new_partitions(self, stats: IngestStats, assigned: set, finish_commit: Callable[[], None]) -> set:
        """Partitions (or whole topics) created since the run started, or freed by a dead member and now leased,
        assigned and positioned after the offsets committed to Delta."""
        if self.leases is not None:
            self.leases.check()
        found = [tp for tp in self._partitions() if tp not in assigned]
        if self.leases is not None and found:
            claimed = self.leases.claim(found)
            found = [tp for tp in found if tp in claimed]
        if not found:
            return set()
        # The previous owner's commits are read from fresh snapshots: the side tables' replay filter must see
        # them too, so the batch in flight is committed first and the cached snapshots dropped.
        finish_commit()
        self.tables.refresh()
        probe = IngestStats()
        new = self._start_positions(probe, only=set(found))
        stats.warnings.extend(probe.warnings)
        # Records already handed out sit in the pending batch: carry on right after them.
        reader = self._open_reader(follow=True)
        current = {tp: reader.position(tp) for tp in assigned}
        reader.assign(dict(sorted({**current, **new}.items())))
        self.log.info("now also consuming %s", ", ".join(f"{topic}[{partition}]" for topic, partition in new))
        return set(new)

    @staticmethod
    def _tp(p: PartitionLag) -> TP:
        return (p.topic, p.partition)

    # --- commit -------------------------------------------------------------------------------------

    def _commit(
        self,
        pending: dict[str, RawRecords],
        last_offsets: dict[tuple[str, int], int],
        stats: IngestStats,
        predecoded: dict[str, list[_Predecoded]] | None = None,
        types_path: str | None = None,
    ) -> BatchReport:
        """Decode what is still raw and commit one micro-batch: schema changes, then dead letters, then each
        topic's rows. `predecoded` holds what fetch processes decoded already (against column types this
        table still has: columns are only ever added); after a commit that added columns, the new types are
        published to `types_path` for them."""
        self._seq += 1
        batch_id = f"{self._run_id}-{self._seq:06d}"
        now = datetime.now(UTC)
        predecoded = predecoded or {}
        decoded: dict[str, Decoded] = {}
        events = 0
        max_ts = 0
        for topic in {**pending, **predecoded}:
            route = self.routes[topic]
            parts: list[Decoded] = []
            n = 0
            raw = pending.get(topic)
            if raw is not None:
                epochs = {p: self._epochs.get((topic, p), 0) for p in set(raw.partitions)}
                ctx = BatchContext(batch_id, now, epochs)
                parts.append(decode_records(raw, route, self.tables.column_types(route.table), ctx))
                n += len(raw)
                max_ts = max(max_ts, max(raw.timestamps))
            for piece in predecoded.get(topic, ()):
                parts.append(Decoded(piece.rows, piece.dead_letters, piece.schema_changes, []))
                n += piece.events
                max_ts = max(max_ts, piece.max_timestamp_ms)
            decoded[topic] = parts[0] if len(parts) == 1 and raw is not None else _combine(parts, batch_id, now)
            events += n
            stats.table(route.table).events_read += n
        epochs = {tp: self._epochs.get(tp, 0) for tp in last_offsets}
        meta = {"optibid.batch_id": batch_id}
        # The sink sees the rows before Delta does: it must be idempotent per Kafka record (a crash between
        # the two replays the batch), and then no committed row can be missing from it.
        if self.row_sink is not None:
            for topic, d in decoded.items():
                if d.rows.num_rows:
                    self.row_sink(self.routes[topic], d.rows)
        self._commit_side_tables(
            {topic: (d.schema_changes, d.dead_letters) for topic, d in decoded.items()}, last_offsets, epochs, meta,
            stats,
        )
        for topic, d in decoded.items():
            route: TopicRoute = self.routes[topic]
            offsets = {tp: off for tp, off in last_offsets.items() if tp[0] == topic}
            self.tables.append(
                route.table,
                d.rows,
                topic_offsets=offsets,
                epochs={tp: e for tp, e in epochs.items() if tp[0] == topic},
                merge_schema=bool(d.new_columns),
                metadata=meta,
            )
            ts = stats.table(route.table)
            ts.rows_written += d.rows.num_rows
            ts.commits += 1
            ts.new_columns.extend(d.new_columns)
            if d.new_columns:
                self.log.info("bronze.%s: added nullable column(s) %s", route.table, ", ".join(d.new_columns))
        # Republished after any batch that came raw, even without a new column (another batch may have added
        # it first): fetch processes that shipped raw records wait for this file to change.
        if types_path is not None and (pending or any(d.new_columns for d in decoded.values())):
            self._publish_column_types(types_path)
        return BatchReport(batch_id, events, time.time(), max_ts)

    def _commit_side_tables(
        self,
        sides: dict[str, tuple[pa.Table, pa.Table]],
        last_offsets: dict[tuple[str, int], int],
        epochs: dict[tuple[str, int], int],
        meta: dict[str, object],
        stats: IngestStats,
    ) -> None:
        """Each topic's (schema changes, dead letters) of a batch, committed before the batch's rows.

        Bookkeeping tables go first: a crash before the rows' commit replays the batch, and filter_new drops
        what these tables already cover, so they never hold an event twice."""
        for side_table, index in ((SCHEMA_CHANGES_TABLE, 0), (DEAD_LETTERS_TABLE, 1)):
            parts = [side[index] for side in sides.values() if side[index].num_rows]
            if not parts:
                continue
            data = filter_new(pa.concat_tables(parts), self._covered(side_table, last_offsets))
            if data.num_rows:
                self.tables.append(side_table, data, topic_offsets=last_offsets, epochs=epochs, metadata=meta)
            for topic, side in sides.items():
                ts = stats.table(self.routes[topic].table)
                if index == 1:
                    ts.dead_lettered += side[index].num_rows
                else:
                    ts.schema_changes += side[index].num_rows

    def _commit_files(
        self, piece_id: str, files: dict[str, tuple], last_offsets: dict[tuple[str, int], int], stats: IngestStats
    ) -> BatchReport:
        """Commit one batch a fetch process wrote as Parquet files into the tables (`fetch.write_parquet`):
        side tables first, as in `_commit`, then each table's file with its partitions' offsets. Nothing is
        encoded here; the batch id is the one the fetch process stamped on the rows."""
        epochs = {tp: self._epochs.get(tp, 0) for tp in last_offsets}
        meta = {"optibid.batch_id": piece_id}
        self._commit_side_tables(
            {topic: (f[5], f[4]) for topic, f in files.items()}, last_offsets, epochs, meta, stats
        )
        events, max_ts = 0, 0
        for topic, (name, size, file_stats, rows, _, _, n, topic_max_ts) in files.items():
            table = self.routes[topic].table
            self.tables.append_file(
                table, name, size, file_stats,
                topic_offsets={tp: off for tp, off in last_offsets.items() if tp[0] == topic},
                epochs={tp: e for tp, e in epochs.items() if tp[0] == topic},
                metadata=meta,
            )
            ts = stats.table(table)
            ts.events_read += n
            ts.rows_written += rows
            ts.commits += 1
            events += n
            max_ts = max(max_ts, topic_max_ts)
        return BatchReport(piece_id, events, time.time(), max_ts)

    def _covered(self, table: str, last_offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Offsets per partition that `table` already holds in the current epoch (replays skip them)."""
        covered = {}
        for topic, partition in last_offsets:
            if self.tables.epoch(table, topic, partition) != self._epochs.get((topic, partition), 0):
                continue
            last = self.tables.last_offset(table, topic, partition)
            if last is not None:
                covered[(topic, partition)] = last
        return covered



@dataclass(frozen=True)
class _Predecoded:
    """One poll of one topic as a fetch process decoded it (see `ingestion.cdc.fetch`)."""

    rows: pa.Table
    dead_letters: pa.Table
    schema_changes: pa.Table
    events: int
    max_timestamp_ms: int


def _combine(parts: list[Decoded], batch_id: str, ingested_at: datetime) -> Decoded:
    """One topic's decoded pieces as one batch, stamped with the batch's id and ingestion time.

    Pieces decoded before a column existed lack it and get nulls (`promote_options`); a column both have
    must have one type, or the concatenation raises rather than casting.
    """

    def stamped(tables: list[pa.Table]) -> pa.Table:
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        n = table.num_rows
        for name, value, arrow_type in (("_batch_id", batch_id, pa.string()), ("_ingested_at", ingested_at, TS_TYPE)):
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), pa.repeat(pa.scalar(value, arrow_type), n))
        return table

    return Decoded(
        stamped([p.rows for p in parts]),
        stamped([p.dead_letters for p in parts]),
        stamped([p.schema_changes for p in parts]),
        [c for p in parts for c in p.new_columns],
    )


def _relay(index: int, child: subprocess.Popen, inbox: queue.Queue) -> None:
    """Forward a fetch process's announcements to the drain loop; None when its output ends otherwise."""
    try:
        for line in child.stdout:
            message = json.loads(line)
            inbox.put((index, message))
            if message["kind"] in ("done", "error"):
                return
    except Exception:  # garbled output: the drain loop reports the child as failed
        _log.exception("fetch process %d sent an unreadable line", index)
    inbox.put((index, None))
