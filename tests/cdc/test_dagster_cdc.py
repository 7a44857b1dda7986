"""The bronze CDC multi-asset, its dead-letter check and its lag sensor, run by Dagster for real."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest

from assets.bronze import cdc
from assets.shared.resources import BrokerResource, LakeResource, WarehouseResource
from infra.settings import get_settings
from tests.cdc.conftest import bronze
from tests.cdc.test_bad_input_and_schema import bid, envelope
from tests.cdc.test_exactly_once import _start_follow, _wait_for_commits


@pytest.fixture
def topics_config() -> cdc.CdcTopicsConfig:
    prefix = f"t{uuid.uuid4().hex[:10]}.public"
    return cdc.CdcTopicsConfig(topic_prefix=prefix, ticks_topic=f"{prefix}.ticks")


@pytest.fixture
def resources(broker_bootstrap, lake, database_url) -> dict[str, dg.ConfigurableResource]:
    return {
        "broker": BrokerResource(bootstrap_servers=broker_bootstrap),
        "lake": LakeResource(lake_uri=lake.root),
        "warehouse": WarehouseResource(database_url=database_url),
    }


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
    # Topic absent: nothing to read, not an error, and no materialization that would start silver runs.
    assert "cdc__trades" not in meta
    observed = {o.asset_key.path[-1]: o.metadata for o in result.asset_observations_for_node("bronze_cdc")}
    assert observed["cdc__trades"]["events_read"].value == 0
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
    assert "cdc__bids" not in meta
    observed = {o.asset_key.path[-1]: o.metadata for o in again.asset_observations_for_node("bronze_cdc")}
    assert observed["cdc__bids"]["events_read"].value == 0
    (evaluation,) = again.get_asset_check_evaluations()
    assert evaluation.passed
    assert bronze(lake, "cdc__bids").num_rows == 30


def test_bronze_suites_validate_only_the_rows_each_drain_appended(producer, topics_config, resources):
    bids_topic = f"{topics_config.topic_prefix}.bids"
    instance = dg.DagsterInstance.ephemeral()

    def drain() -> dict[str, dg.AssetCheckEvaluation]:
        result = dg.materialize(
            [cdc.bronze_cdc, *cdc.cdc_table_checks],
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(ops={"bronze_cdc": topics_config}),
        )
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    producer(bids_topic, [(b"k", envelope("c", bid(i))) for i in range(12)])
    first = drain()
    # Only the tables a drain wrote are checked: the other topics' steps are skipped with their asset.
    assert set(first) == {"cdc__bids_expectations"}
    assert first["cdc__bids_expectations"].passed
    assert not first["cdc__bids_expectations"].blocking
    assert first["cdc__bids_expectations"].metadata["row_count"].value == 12

    producer(bids_topic, [(b"k", envelope("u", bid(i))) for i in range(5)])
    second = drain()
    assert second["cdc__bids_expectations"].passed
    assert second["cdc__bids_expectations"].metadata["row_count"].value == 5


def test_lag_sensor_observes_lag_and_requests_a_run_above_the_threshold(
    producer, topics_config, resources, monkeypatch
):
    producer(f"{topics_config.topic_prefix}.assets", [(b"k", envelope("r", bid(i))) for i in range(12)])
    sensor = cdc.build_lag_sensor("test_cdc_lag_sensor", topics_config)
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


def test_commits_sensor_records_follow_mode_commits_once_a_burst_settles(
    producer, topics_config, resources, lake, monkeypatch
):
    """The follow-mode consumer's commits become materializations (what starts silver), once per burst,
    and at most every `TRADING_MAX_WAIT_SECONDS` while a table is written without pause."""
    from ingestion.cdc import CdcConsumer

    bids_topic = f"{topics_config.topic_prefix}.bids"

    def commit(first: int) -> None:
        producer(bids_topic, [(b"k", envelope("c", bid(i))) for i in range(first, first + 5)])
        with CdcConsumer(lake, resources["broker"].client_config(), [bids_topic]) as consumer:
            consumer.drain()

    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def evaluate() -> list[dg.AssetMaterialization]:
        nonlocal cursor
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
            result = cdc.bronze_cdc_commits_sensor(context)
        cursor = result.cursor
        return [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]

    commit(0)
    assert evaluate() == []  # just written: the burst may go on
    monkeypatch.setattr(cdc, "COMMITS_QUIET_SECONDS", 0)
    (recorded,) = evaluate()
    assert recorded.asset_key == dg.AssetKey(["bronze", "cdc__bids"])
    version = recorded.metadata["delta_version"].value
    assert version == lake.table("bronze", "cdc__bids").version()
    assert evaluate() == []  # nothing new

    # A table written without pause is never quiet, and is recorded once it is overdue.
    monkeypatch.setattr(cdc, "COMMITS_QUIET_SECONDS", 10**9)
    commit(5)
    monkeypatch.setattr(cdc, "TRADING_MAX_WAIT_SECONDS", 10**9)
    assert evaluate() == []
    monkeypatch.setattr(cdc, "TRADING_MAX_WAIT_SECONDS", 0)
    (overdue,) = evaluate()
    assert overdue.metadata["delta_version"].value > version
    assert overdue.metadata["previous_delta_version"].value == version


def test_a_drain_steps_aside_while_a_follow_mode_consumer_owns_the_lake(
    producer, topics_config, resources, lake, database_url, broker_bootstrap
):
    """The follow-mode consumer (the real CLI process) owns the lake's CDC tables: a drain run beside it reads
    nothing and fails nothing, and a second follow-mode consumer refuses to start."""
    from ingestion.cdc.ownership import follow_mode_active

    bids_topic = f"{topics_config.topic_prefix}.bids"
    producer(bids_topic, [(b"k", envelope("c", bid(i))) for i in range(20)])
    follower = _start_follow(broker_bootstrap, lake, bids_topic)
    try:
        _wait_for_commits(lake, "cdc__bids", 0, follower)
        assert follow_mode_active(database_url, lake.root)
        result = _materialize(topics_config, resources, dg.DagsterInstance.ephemeral())
        assert result.success
        assert "cdc__bids" not in {m.asset_key.path[-1] for m in result.asset_materializations_for_node("bronze_cdc")}
        second = _start_follow(broker_bootstrap, lake, bids_topic)
        _, err = second.communicate(timeout=120)
        assert second.returncode != 0 and b"another follow-mode consumer owns" in err
    finally:
        follower.terminate()
        follower.wait(timeout=60)
    assert bronze(lake, "cdc__bids").num_rows == 20
    assert not follow_mode_active(database_url, lake.root)
