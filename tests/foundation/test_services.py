"""The embedded services start, migrate and report; a configured server is used when set."""

from __future__ import annotations

import psycopg


def test_embedded_database_is_migrated(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        schemas = {r[0] for r in conn.execute("select schema_name from information_schema.schemata")}
        applied = {r[0] for r in conn.execute("select name from ops.schema_migrations")}
    assert {"bronze", "silver", "gold", "ml", "ops"} <= schemas
    assert "001_core.sql" in applied


def test_broker_roundtrip(broker_bootstrap: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=broker_bootstrap)
    meta = producer.send("foundation.smoke", b"hello").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker_bootstrap, enable_auto_commit=False)
    tp = TopicPartition("foundation.smoke", meta.partition)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    records = consumer.poll(timeout_ms=5000)
    consumer.close()
    assert [r.value for r in records[tp]] == [b"hello"]
