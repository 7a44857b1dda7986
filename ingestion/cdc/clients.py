"""The two Kafka clients the CDC consumer can read with, behind one small interface.

`kafka-python` is the design's client (pure Python: its record parsing is most of a drain's fetch CPU);
`librdkafka` is confluent-kafka, whose C client parses records at ~1-2 CPU µs/event. Both are used the
same way, the only way the consumer needs: partitions **assigned** at explicit offsets (never subscribed,
no group join, nothing committed to the broker: offsets live in Delta), records handed over per partition
as columns (offsets, timestamps, keys, values), which is the shape `decode.RawRecords` is built from.

`Reader` reads; `Probe` answers metadata and watermark questions without moving a reader. High-water
marks are always confirmed with a fetch: tansu 0.6 answers ListOffsets(latest) with the base offset of the
partition's last record batch, while a fetch response carries the true high-water mark.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Literal, Protocol

Client = Literal["kafka-python", "librdkafka"]
CLIENTS: tuple[Client, ...] = ("kafka-python", "librdkafka")

TP = tuple[str, int]  # (topic, partition)
Columns = tuple[list[int], list[int], list[bytes | None], list[bytes | None]]  # offsets, timestamps, keys, values


class Reader(Protocol):
    """Reads assigned partitions from explicit offsets."""

    def assign(self, positions: dict[TP, int]) -> None:
        """Read exactly these partitions, each from its offset (replaces the previous assignment)."""

    def poll(self, max_records: int, timeout: float) -> dict[TP, Columns]:
        """Up to `max_records` records, waiting at most `timeout` seconds; in offset order per partition."""

    def position(self, tp: TP) -> int:
        """The next offset this reader will return for `tp`."""

    def pause(self, tp: TP) -> None:
        """Stop fetching `tp` (its range is done)."""

    def close(self) -> None: ...


class Probe(Protocol):
    """Metadata and watermarks, from a client of its own."""

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; empty when the topic does not exist."""

    def low_watermarks(self, tps: list[TP]) -> dict[TP, int]: ...

    def high_watermarks(self, tps: list[TP]) -> dict[TP, int]:
        """The high-water marks, confirmed by a fetch (see the module docstring)."""

    def close(self) -> None: ...


def cut_at(columns: Columns, end: int) -> Columns:
    """`columns` without the records at or beyond offset `end` (a drain's range is [start, end))."""
    offsets = columns[0]
    if not offsets or offsets[-1] < end:
        return columns
    n = bisect.bisect_left(offsets, end)
    return offsets[:n], columns[1][:n], columns[2][:n], columns[3][:n]


def open_reader(
    client: Client, client_config: dict[str, Any], *, fetch_max_bytes: int, max_partition_fetch_bytes: int,
    max_records: int, latency: bool = False,
) -> Reader:
    """A reader on `client`. `latency` (follow mode) answers a fetch as soon as any record is there; otherwise
    the broker may wait up to 100 ms to fill larger fetches (fewer round trips per event in a drain)."""
    if client == "librdkafka":
        return LibrdkafkaReader(client_config, fetch_max_bytes, max_partition_fetch_bytes, latency)
    if client == "kafka-python":
        return KafkaPythonReader(client_config, fetch_max_bytes, max_partition_fetch_bytes, max_records)
    raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(CLIENTS)}")


def open_probe(client: Client, client_config: dict[str, Any]) -> Probe:
    """A probe on `client` (see `Probe`)."""
    if client == "librdkafka":
        return LibrdkafkaProbe(client_config)
    if client == "kafka-python":
        return KafkaPythonProbe(client_config)
    raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(CLIENTS)}")


# --- kafka-python ---------------------------------------------------------------------------------


class KafkaPythonReader:
    """kafka-python `KafkaConsumer` with assigned partitions and `seek`."""

    def __init__(
        self, client_config: dict[str, Any], fetch_max_bytes: int, max_partition_fetch_bytes: int, max_records: int
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._tp = TopicPartition
        self._consumer = KafkaConsumer(
            **client_config,
            group_id=None,  # assigned partitions: no group join, no broker-side offsets
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_wait_ms=100,
            max_poll_records=max_records,
            allow_auto_create_topics=False,  # reading must never create a topic
        )

    def assign(self, positions: dict[TP, int]) -> None:
        self._consumer.assign([self._tp(*tp) for tp in positions])
        for tp, offset in positions.items():
            self._consumer.seek(self._tp(*tp), offset)

    def poll(self, max_records: int, timeout: float) -> dict[TP, Columns]:
        polled = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max(1, max_records))
        return {
            (tp.topic, tp.partition): (
                [r.offset for r in records], [r.timestamp for r in records], [r.key for r in records],
                [r.value for r in records],
            )
            for tp, records in polled.items()
            if records
        }

    def position(self, tp: TP) -> int:
        return self._consumer.position(self._tp(*tp))

    def pause(self, tp: TP) -> None:
        self._consumer.pause(self._tp(*tp))

    def close(self) -> None:
        self._consumer.close()


class KafkaPythonProbe:
    """kafka-python client for metadata and watermarks; its fetches are one record per partition."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._tp = TopicPartition
        self._consumer = KafkaConsumer(
            **client_config, group_id=None, enable_auto_commit=False, allow_auto_create_topics=False,
            fetch_max_wait_ms=100, max_partition_fetch_bytes=1024 * 1024,
        )

    def partitions(self, topic: str) -> list[int]:
        return sorted(self._consumer.partitions_for_topic(topic) or ())

    def low_watermarks(self, tps: list[TP]) -> dict[TP, int]:
        low = self._consumer.beginning_offsets([self._tp(*tp) for tp in tps])
        return {(tp.topic, tp.partition): offset for tp, offset in low.items()}

    def high_watermarks(self, tps: list[TP]) -> dict[TP, int]:
        probe = self._consumer
        kafka_tps = [self._tp(*tp) for tp in tps]
        listed = probe.end_offsets(kafka_tps)
        probe.assign(kafka_tps)
        for tp in kafka_tps:
            probe.seek(tp, listed[tp])
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(probe.highwater(tp) is None for tp in kafka_tps):
            probe.poll(timeout_ms=100, max_records=1)
        high = {(tp.topic, tp.partition): max(listed[tp], probe.highwater(tp) or 0) for tp in kafka_tps}
        probe.unsubscribe()  # a fresh assignment next time: highwater() must come from a new fetch
        return high

    def close(self) -> None:
        self._consumer.close()


# --- librdkafka (confluent-kafka) -----------------------------------------------------------------


def librdkafka_config(client_config: dict[str, Any]) -> dict[str, Any]:
    """The kafka-python style connection settings (`infra.services.kafka_security_config`) as librdkafka's.

    A setting without an equivalent raises rather than being dropped (a dropped security setting would
    connect differently). `bootstrap_timeout_ms` is not a librdkafka setting: see `_bootstrap_timeout`.
    """
    client_config = {k: v for k, v in client_config.items() if k != "bootstrap_timeout_ms"}
    names = {
        "bootstrap_servers": "bootstrap.servers", "security_protocol": "security.protocol",
        "sasl_mechanism": "sasl.mechanism", "sasl_plain_username": "sasl.username",
        "sasl_plain_password": "sasl.password", "ssl_cafile": "ssl.ca.location",
    }
    unknown = set(client_config) - set(names)
    if unknown:
        raise ValueError(f"no librdkafka equivalent for client setting(s) {sorted(unknown)}")
    config = {names[key]: value for key, value in client_config.items() if value is not None}
    if isinstance(config.get("bootstrap.servers"), list | tuple):
        config["bootstrap.servers"] = ",".join(config["bootstrap.servers"])
    return {
        **config,
        # librdkafka insists on a group id; with assign() and no commits it never reaches the broker.
        "group.id": "optibid-cdc-assigned",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "check.crcs": True,  # as kafka-python does; hardware CRC32C makes it cheap
        # Read what a kafka-python consumer reads (its default), so both clients see the same records.
        "isolation.level": "read_uncommitted",
    }


def _bootstrap_timeout(client_config: dict[str, Any]) -> float:
    """Seconds to wait for the first metadata answer, as kafka-python's `bootstrap_timeout_ms` (default 2 s
    there; 10 s here, librdkafka connects in the background and a loaded machine is slow to schedule it)."""
    return client_config.get("bootstrap_timeout_ms", 10_000) / 1000


def _check_reachable(consumer: Any, client_config: dict[str, Any]) -> None:
    """Fail like kafka-python does on an unreachable bootstrap server; librdkafka would retry forever and a
    drain would only notice at its stall timeout."""
    from confluent_kafka import KafkaException

    try:
        consumer.list_topics(timeout=_bootstrap_timeout(client_config))
    except KafkaException as exc:
        consumer.close()
        raise ConnectionError(f"no Kafka broker reachable at {client_config.get('bootstrap_servers')}: {exc}") from exc


class LibrdkafkaReader:
    """confluent-kafka `Consumer` with `assign([TopicPartition(topic, partition, offset)])`, batched `consume`."""

    def __init__(
        self, client_config: dict[str, Any], fetch_max_bytes: int, max_partition_fetch_bytes: int, latency: bool
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._tp = TopicPartition
        self._consumer = Consumer({
            **librdkafka_config(client_config),
            "fetch.max.bytes": fetch_max_bytes,
            "max.partition.fetch.bytes": max_partition_fetch_bytes,
            "receive.message.max.bytes": fetch_max_bytes + 1024 * 1024,
            # A drain lets the broker fill fetches (fewer round trips per event); following answers at once.
            "fetch.min.bytes": 1 if latency else 1024 * 1024,
            "fetch.wait.max.ms": 20 if latency else 100,
            # The background prefetch queue, per partition: deep enough that consume() rarely waits on the
            # network, bounded so that a many-partition assignment does not hold gigabytes.
            "queued.max.messages.kbytes": 32 * 1024,
            "queued.min.messages": 200_000,
            # Once the queue is over those bounds, librdkafka waits this long before fetching again (1 s by
            # default): a fetch process decoding a 50,000-record batch drained the queue meanwhile and then
            # sat idle on an empty one.
            "fetch.queue.backoff.ms": 10,
        })
        _check_reachable(self._consumer, client_config)
        self._positions: dict[TP, int] = {}

    def assign(self, positions: dict[TP, int]) -> None:
        self._consumer.assign([self._tp(topic, partition, offset) for (topic, partition), offset in positions.items()])
        self._positions = dict(positions)

    def poll(self, max_records: int, timeout: float) -> dict[TP, Columns]:
        from confluent_kafka import KafkaError, KafkaException

        messages = self._consumer.consume(num_messages=max(1, max_records), timeout=timeout)
        out: dict[TP, Columns] = {}
        current: TP | None = None
        offsets = timestamps = keys = values = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            tp = (message.topic(), message.partition())
            if tp != current:  # records come in runs per partition: one lookup per run
                columns = out.get(tp)
                if columns is None:
                    columns = out[tp] = ([], [], [], [])
                offsets, timestamps, keys, values = columns
                current = tp
            offsets.append(message.offset())
            timestamps.append(message.timestamp()[1])
            keys.append(message.key())
            values.append(message.value())
        for tp, columns in out.items():
            self._positions[tp] = columns[0][-1] + 1
        return out

    def position(self, tp: TP) -> int:
        return self._positions[tp]

    def pause(self, tp: TP) -> None:
        self._consumer.pause([self._tp(*tp)])

    def close(self) -> None:
        self._consumer.close()


class LibrdkafkaProbe:
    """confluent-kafka client for metadata and watermarks."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._tp = TopicPartition
        self._config = {
            **librdkafka_config(client_config),
            # Confirmation fetches need one batch per partition, not a prefetched partition.
            "fetch.max.bytes": 1024 * 1024, "max.partition.fetch.bytes": 1024 * 1024,
            "queued.max.messages.kbytes": 1024, "fetch.wait.max.ms": 20,
        }
        self._consumer = Consumer(self._config)
        _check_reachable(self._consumer, client_config)

    def partitions(self, topic: str) -> list[int]:
        found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:  # UNKNOWN_TOPIC_OR_PART: not there (yet)
            return []
        return sorted(found.partitions)

    def low_watermarks(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self._consumer.get_watermark_offsets(self._tp(*tp), timeout=10, cached=False)[0] for tp in tps}

    def high_watermarks(self, tps: list[TP]) -> dict[TP, int]:
        from confluent_kafka import Consumer

        listed = {
            tp: self._consumer.get_watermark_offsets(self._tp(*tp), timeout=10, cached=False)[1] for tp in tps
        }
        if not tps:
            return {}
        # The watermarks a fetch reported are cached per client and survive a re-assignment, so each
        # confirmation uses a client of its own: a stale cached value would hide newer records.
        confirm = Consumer(self._config)
        try:
            confirm.assign([self._tp(topic, partition, listed[(topic, partition)]) for topic, partition in tps])
            seen: dict[TP, int] = {}
            deadline = time.monotonic() + 5.0
            while len(seen) < len(tps) and time.monotonic() < deadline:
                confirm.consume(num_messages=1000, timeout=0.05)
                for tp in tps:
                    if tp not in seen:
                        high = confirm.get_watermark_offsets(self._tp(*tp), cached=True)[1]
                        if high >= 0:
                            seen[tp] = high
        finally:
            confirm.close()
        return {tp: max(listed[tp], seen.get(tp, 0)) for tp in tps}

    def close(self) -> None:
        self._consumer.close()
