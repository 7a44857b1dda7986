"""The bronze CDC multi-asset, its dead-letter check and its lag sensor, run by Dagster for real."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest

from assets.bronze import cdc
from infra.settings import get_settings
from orchestration.resources import BrokerResource, LakeResource
from orchestration.sensors import build_lag_sensor
from tests.cdc.conftest import bronze
from tests.cdc.test_bad_input_and_schema import bid, envelope


@pytest.fixture
def topics_config() -> cdc.CdcTopicsConfig:
    prefix = f"t{uuid.uuid4().hex[:10]}.public"
    return cdc.CdcTopicsConfig(topic_prefix=prefix, ticks_topic=f"{prefix}.ticks")


@pytest.fixture
def resources(broker_bootstrap, lake) -> dict[str, dg.ConfigurableResource]:
    return {"broker": BrokerResource(bootstrap_servers=broker_bootstrap), "lake": LakeResource(lake_uri=lake.root)}


def _materialize(topics_config, resources, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [cdc.bronze_cdc, cdc.cdc_dead_letter_rate],
        instance=instance,
        resources=resources,
        run_config=dg.RunConfig(ops={"bronze_cdc": topics_config}),
        raise_on_error=False,
    )


def test_asset_drains_reports_metadata_and_checks_dead_letters(producer, topics_config, resources, lake):
    bids_topic = f"{topics_config.topic_prefix}.bids"
    messages = [(b"k", envelope("c", bid(i))) for i in range(30)] + [(b"k", b"oops"), (b"k", envelope("q", bid(1)))]
    producer(bids_topic, messages, partitions=2)
    instance = dg.DagsterInstance.ephemeral()

    result = _materialize(topics_config, resources, instance)
    meta = {
        m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("bronze_cdc")
    }
    assert meta["cdc__bids"]["events_read"].value == 32
    assert meta["cdc__bids"]["rows_written"].value == 30
    assert meta["cdc__bids"]["dead_lettered"].value == 2
    assert meta["cdc__bids"]["lag_before"].value == 32
    assert meta["cdc__bids"]["lag_after"].value == 0
    assert meta["cdc__trades"]["events_read"].value == 0  # topic absent: nothing to read, not an error
    assert meta["cdc__dead_letters"]["dead_lettered"].value == 2
    assert bronze(lake, "cdc__bids").num_rows == 30

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed  # 2 of 32 is above the default 1 % maximum
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["dead_letters_last_24h"].value == 2
    assert evaluation.metadata["reasons_last_24h"].value == {"invalid_json": 1, "unknown_op": 1}

    # Back to back: nothing new, nothing read twice, and the check passes.
    again = _materialize(topics_config, resources, instance)
    meta = {m.asset_key.path[-1]: m.metadata for m in again.asset_materializations_for_node("bronze_cdc")}
    assert meta["cdc__bids"]["events_read"].value == 0
    (evaluation,) = again.get_asset_check_evaluations()
    assert evaluation.passed
    assert bronze(lake, "cdc__bids").num_rows == 30


def test_lag_sensor_observes_lag_and_requests_a_run_above_the_threshold(
    producer, topics_config, resources, monkeypatch
):
    producer(f"{topics_config.topic_prefix}.assets", [(b"k", envelope("r", bid(i))) for i in range(12)])
    sensor = build_lag_sensor("test_cdc_lag_sensor", topics_config)
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(threshold: int) -> dg.SensorResult:
        monkeypatch.setenv("OPTIBID_CDC_LAG_THRESHOLD", str(threshold))
        get_settings.cache_clear()
        try:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                return sensor(context)
        finally:
            monkeypatch.delenv("OPTIBID_CDC_LAG_THRESHOLD")
            get_settings.cache_clear()

    quiet = evaluate(100)
    assert not quiet.run_requests and "lag 12 <= threshold 100" in quiet.skip_reason.skip_message
    lag = {o.asset_key.path[-1]: o.metadata["lag"].value for o in quiet.asset_events}
    assert lag["cdc__assets"] == 12 and lag["cdc__bids"] == 0

    busy = evaluate(5)
    (request,) = busy.run_requests
    assert request.tags["optibid/cdc_lag"] == "12"
    assert request.run_config["ops"]["bronze_cdc"]["config"]["topic_prefix"] == topics_config.topic_prefix
