"""CDC test helpers: produce with confluent-kafka's producer (not the consumer under test) and read bronze back.

`cdc_client` runs a test once per Kafka client the consumer can read with (`ingestion.cdc.clients`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import pyarrow as pa
import pytest

from infra.lake import Lake


def unique_topic(table: str) -> str:
    """A Debezium-style topic no other test uses (the broker is shared by the whole session)."""
    return f"t{uuid.uuid4().hex[:10]}.public.{table}"


Produced = list[tuple[str, int, int]]


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    *,
    partitions: int = 3,
    partition: int | None = None,
) -> Produced:
    """Create `topic` if needed and send (key, value) pairs; the delivered (topic, partition, offset)s."""
    return [(t, p, o) for t, p, o, _ in produce_with_values(bootstrap, topic, messages, partitions=partitions,
                                                             partition=partition)]


def produce_with_values(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    *,
    partitions: int = 3,
    partition: int | None = None,
) -> list[tuple[str, int, int, bytes | None]]:
    """Like `produce`, with each delivered message's value (delivery order is not send order)."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=10).topics:
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=10)
        except KafkaException as exc:  # created concurrently: fine
            if "already exists" not in str(exc).lower():
                raise
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    delivered: list[tuple[str, int, int, bytes | None]] = []
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append((msg.topic(), msg.partition(), msg.offset(), msg.value()))

    for key, value in messages:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **kwargs)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, f"produce failed: {remaining} undelivered, errors {errors[:3]}"
    return delivered


def bronze(lake: Lake, table: str) -> pa.Table:
    """The whole bronze table (empty table when it does not exist)."""
    dt = lake.table("bronze", table)
    return pa.table({}) if dt is None else dt.to_pyarrow_table()


def coordinates(data: pa.Table) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of every row, sorted, duplicates kept."""
    if data.num_rows == 0:
        return []
    return sorted(zip(data["_topic"].to_pylist(), data["_partition"].to_pylist(), data["_offset"].to_pylist(),
                      strict=True))


@pytest.fixture(params=["kafka-python", "librdkafka"])
def cdc_client(request, monkeypatch) -> str:
    """Each Kafka client in turn: passed to `CdcConsumer(client=...)` by the test and, through
    OPTIBID_CDC_CLIENT, to the consumer processes it starts."""
    monkeypatch.setenv("OPTIBID_CDC_CLIENT", request.param)
    return request.param


@pytest.fixture
def client_config(broker_bootstrap: str, settings) -> dict[str, object]:
    from infra.services import kafka_security_config

    return {"bootstrap_servers": broker_bootstrap, **kafka_security_config(settings)}


@pytest.fixture
def producer(broker_bootstrap: str) -> Callable[..., Produced]:
    def _produce(topic: str, messages: Iterable[tuple[bytes | None, bytes | None]], **kwargs) -> Produced:
        return produce(broker_bootstrap, topic, messages, **kwargs)

    return _produce
