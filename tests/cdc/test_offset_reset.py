"""A broker whose offsets restarted (in-memory broker restarted, topic recreated) is reported, not skipped."""

from __future__ import annotations

import time

import pytest

from ingestion.cdc import CdcConsumer, OffsetResetError
from tests.cdc.conftest import bronze, produce, unique_topic
from tests.cdc.test_bad_input_and_schema import bid, envelope


def _recreate(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=10)
    deadline = time.monotonic() + 10
    while topic in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, "topic was not deleted"
        time.sleep(0.1)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=10)


def test_restarted_offsets_are_reread_under_a_new_epoch_with_a_warning(
    cdc_client, broker_bootstrap, client_config, lake
):
    topic = unique_topic("bids")
    produce(broker_bootstrap, topic, [(b"k", envelope("c", bid(i))) for i in range(20)], partitions=1)
    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        assert consumer.drain().rows_written == 20

    _recreate(broker_bootstrap, topic)
    produce(broker_bootstrap, topic, [(b"k", envelope("c", bid(100 + i))) for i in range(5)], partitions=1)

    with CdcConsumer(lake, client_config, [topic], reset_policy="fail", client=cdc_client) as consumer, pytest.raises(
        OffsetResetError, match="offsets restarted"
    ):
        consumer.drain()

    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        stats = consumer.drain()
    assert stats.rows_written == 5
    assert len(stats.warnings) == 1 and "offsets restarted" in stats.warnings[0]
    assert "_offset_epoch 1" in stats.warnings[0]
    rows = bronze(lake, "cdc__bids").sort_by([("_offset_epoch", "ascending"), ("_offset", "ascending")])
    assert rows["_offset_epoch"].to_pylist() == [0] * 20 + [1] * 5
    assert rows["_offset"].to_pylist() == list(range(20)) + list(range(5))

    # The new epoch is remembered: the next run neither warns again nor re-reads.
    with CdcConsumer(lake, client_config, [topic], client=cdc_client) as consumer:
        again = consumer.drain()
    assert again.events_read == 0 and again.warnings == []
