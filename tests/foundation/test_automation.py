"""The platform runs itself: every asset after bronze has an automation condition, the sensors and schedules
a running platform needs are on by default, freshness policies are declared, and the real conditions,
evaluated against a real Dagster instance, request exactly the days that changed, as one backfill."""

from __future__ import annotations

import os
import time
from datetime import date, datetime, timedelta

import dagster as dg
import pytest

BRONZE_GROUP = "bronze"
MARKET_DAYS = dg.AssetKey(["bronze", "market_days"])
SILVER_PRICES = dg.AssetKey(["silver", "market__prices"])
# A held run waits for the test to release it; the bound only keeps a broken test from hanging. It is generous
# because the test releases one held run only after another has ended, and a slow end of that other run (it
# took a minute while SIGTERM was ignored, see tests/conftest.py) must not fail the held one.
HELD_RUN_TIMEOUT_S = 600
ZONES = dg.AssetKey(["silver", "ref__zones"])
SILVER_MARKET = [
    dg.AssetKey(["silver", t])
    for t in (
        "market__prices",
        "market__price_revisions",
        "market__load",
        "market__generation",
        "market__weather",
        "quality__gaps",
    )
]


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs


@pytest.fixture(scope="module")
def asset_graph(defs):
    return defs.get_repository_def().asset_graph


def _materializable_after_bronze(asset_graph) -> list[dg.AssetKey]:
    bronze = {k for k in asset_graph.materializable_asset_keys if asset_graph.get(k).group_name == BRONZE_GROUP}
    return sorted(
        k for k in asset_graph.materializable_asset_keys if k not in bronze and asset_graph.get(k).group_name
    )


def test_every_asset_after_bronze_has_an_automation_condition(asset_graph) -> None:
    keys = _materializable_after_bronze(asset_graph)
    assert len(keys) > 40  # silver, gold, ML, optimization, exports
    missing = [k.to_user_string() for k in keys if asset_graph.get(k).automation_condition is None]
    from assets.exports import GROUP as EXPORTS
    from assets.exports import clickhouse_configured

    if not clickhouse_configured():  # exports run only by hand where no ClickHouse is installed or configured
        missing = [k for k in missing if asset_graph.get(dg.AssetKey.from_user_string(k)).group_name != EXPORTS]
    from assets.operations import BACKUP
    from infra.settings import get_settings

    if get_settings().backup_key is None:  # backups run nightly only once their encryption key is set
        missing = [k for k in missing if k != BACKUP.to_user_string()]
    assert not missing, f"assets without an automation condition: {missing}"
    # checks ride along in their asset's automated runs (where blocking checks block) only without one
    own_condition = [str(k) for k in asset_graph.asset_check_keys if asset_graph.get(k).automation_condition]
    assert not own_condition, f"checks taken out of their asset's runs: {own_condition}"


def test_sensors_and_schedules_a_running_platform_needs_are_on_by_default(defs) -> None:
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    for name in (
        "automation_sensor",
        "trading_automation_sensor",
        "downstream_automation_sensor",
        "bronze_cdc_lag_sensor",
        "bronze_cdc_commits_sensor",
        "landing_folder_sensor",
    ):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING, name
    for name in ("automation_sensor", "trading_automation_sensor", "downstream_automation_sensor"):
        automation = sensors[name]
        assert isinstance(automation, dg.AutomationConditionSensorDefinition)
        assert automation.emit_backfills
    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["bronze_cdc_floor"].default_status == dg.DefaultScheduleStatus.RUNNING
    stopped = [s.name for s in [*repo.sensor_defs, *repo.schedule_defs] if s.default_status.value != "RUNNING"]
    assert not stopped, f"off by default: {stopped}"


def test_the_path_from_a_landed_file_to_gold_leaves_the_run_queue_first(defs, asset_graph) -> None:
    """Every automated asset has one sensor; the runs of the landing folder, the CDC drain and the warehouse
    path (reference, silver, gold) carry a higher queue priority than those of what follows gold."""
    repo = defs.get_repository_def()
    sensors = [s for s in repo.sensor_defs if isinstance(s, dg.AutomationConditionSensorDefinition)]
    targeted: dict[dg.AssetKey, list[str]] = {}
    for sensor in sensors:
        for key in sensor.asset_selection.resolve(asset_graph):
            targeted.setdefault(key, []).append(sensor.name)
    automated = {k for k in asset_graph.materializable_asset_keys if asset_graph.get(k).automation_condition}
    assert {k: v for k, v in targeted.items() if len(v) > 1} == {}
    assert automated <= set(targeted), automated - set(targeted)

    def priority(tags) -> int:
        return int((tags or {}).get("dagster/priority", 0))

    by_name = {s.name: s for s in sensors}
    warehouse, downstream = by_name["automation_sensor"], by_name["downstream_automation_sensor"]
    trading = by_name["trading_automation_sensor"]
    groups = {
        asset_graph.get(k).group_name
        for sensor in (warehouse, trading)
        for k in sensor.asset_selection.resolve(asset_graph)
    }
    assert groups == {"reference", "silver", "gold"}
    assert trading.run_tags == warehouse.run_tags
    assert priority(warehouse.run_tags) > priority(downstream.run_tags)
    # the market's KPIs are never in a backfill with the trading facts they read (optional parents)
    kpis, bids = dg.AssetKey(["gold", "kpi_values"]), dg.AssetKey(["gold", "fct_bids"])
    assert kpis in warehouse.asset_selection.resolve(asset_graph)
    assert bids in trading.asset_selection.resolve(asset_graph)

    # bronze runs come from jobs (sensors and a schedule): the jobs carry the tag, whatever starts them
    for job in ("landing_files_job", "bronze_cdc_job"):
        assert priority(repo.get_job(job).tags) == priority(warehouse.run_tags), job

    # and the analyses never hold every run slot: the instance caps their tier below the run limit
    import yaml

    from infra.dagster_instance import DAGSTER_YAML

    runs = yaml.safe_load(DAGSTER_YAML)["concurrency"]["runs"]
    (limit,) = [
        rule["limit"]
        for rule in runs["tag_concurrency_limits"]
        if downstream.run_tags.get(rule["key"]) == rule["value"]
    ]
    assert limit < runs["max_concurrent_runs"]
    assert all(warehouse.run_tags.get(rule["key"]) != rule["value"] for rule in runs["tag_concurrency_limits"])


def test_freshness_policies_on_gold_facts_kpis_forecasts_and_optimization(asset_graph) -> None:
    for name in ("fct_prices_hourly", "fct_load_hourly", "kpi_values"):
        policy = asset_graph.get(dg.AssetKey(["gold", name])).freshness_policy
        assert policy is not None and policy.fail_window.to_timedelta() == timedelta(hours=2), name
    for name in ("forecasts", "storage_schedules", "bid_curves", "unit_commitment"):
        policy = asset_graph.get(dg.AssetKey(["gold", name])).freshness_policy
        assert policy is not None and policy.deadline_cron, name


def test_spark_assets_share_a_pool_and_the_instance_limits_it() -> None:
    import yaml

    from assets.silver import silver_market, silver_trading
    from infra.dagster_instance import DAGSTER_YAML

    assert silver_market.op.pool == "spark" and all(a.op.pool == "spark" for a in silver_trading)
    config = yaml.safe_load(DAGSTER_YAML)["concurrency"]
    # two runs on the two-core default: a third only shares the cores
    assert config["runs"]["max_concurrent_runs"] == 2
    # step by step: a run's dbt step waits for the dbt step of a run that asked before it
    assert config["pools"] == {"default_limit": 1, "granularity": "op", "op_granularity_run_buffer": 0}
    from assets.gold import gold_dbt_partitioned, gold_dbt_unpartitioned

    assert gold_dbt_partitioned.op.pool == gold_dbt_unpartitioned.op.pool == "dbt"


def test_runs_that_never_started_are_launched_again_but_failed_assets_are_not(tmp_path, database_url) -> None:
    """On two busy cores the code server can miss its deadline to start a run; such a run (and one whose worker
    died) is retried, while a failed asset or blocking check stays failed (its alert is out)."""
    from infra.dagster_instance import DAGSTER_YAML

    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure
        queue = instance.get_concurrency_config().run_queue_config
        # long enough to outlast a code-server restart under load (105 s, tests/platform/test_dagster_services.py)
        assert queue.max_user_code_failure_retries * queue.user_code_failure_retry_delay >= 300


def test_day_ahead_runs_before_every_market_gate_closure() -> None:
    from ml.optimization.gate_closures import run_before_gate_closure

    crons = run_before_gate_closure(timedelta(hours=2))
    assert ("0 8 * * *", "America/Chicago") in crons  # ERCOT closes 10:00 CPT
    assert ("0 10 * * *", "Asia/Kolkata") in crons  # IEX closes 12:00 IST
    assert ("0 3 * * *", "America/New_York") in crons  # NYISO closes 05:00 ET


# --- the real conditions on a real instance ----------------------------------------------------------------


def _past_days(n: int) -> list[str]:
    today = date.today()
    return [(today - timedelta(days=30 + i)).isoformat() for i in range(n)]


def _record_bronze_days(instance: dg.DagsterInstance, days: list[str]) -> None:
    """What a landing run records for the market days its rows fall on (assets/bronze/files.py)."""
    for day in days:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=MARKET_DAYS, partition=day))


def _record_reference(instance: dg.DagsterInstance) -> None:
    """What the reference run records: the zone reference that dates every market row exists."""
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=ZONES))


def test_market_days_wait_for_the_zone_reference(defs) -> None:
    """On a cold start the landed days wait for the reference run, so silver and the gold models that join the
    reference dimensions go in one run; once the reference exists, the days are asked for."""
    selection = dg.AssetSelection.assets(*SILVER_MARKET, MARKET_DAYS)
    [day] = _past_days(1)
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        _record_bronze_days(instance, [day])
        waiting = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor
        )
        assert waiting.get_requested_partitions(SILVER_PRICES) == set()
        _record_reference(instance)
        ready = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=waiting.cursor
        )
        assert ready.get_requested_partitions(SILVER_PRICES) == {day}
        # a later update of the reference (seeds edited) rebuilds no market day by itself
        for key in SILVER_MARKET:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day))
        _record_reference(instance)
        again = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=ready.cursor
        )
        assert again.get_requested_partitions(SILVER_PRICES) == set()


def test_a_corrected_past_day_rebuilds_exactly_that_silver_day(defs) -> None:
    selection = dg.AssetSelection.assets(*SILVER_MARKET, MARKET_DAYS)
    with dg.instance_for_test() as instance:
        _record_reference(instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        [corrected] = _past_days(1)
        _record_bronze_days(instance, [corrected])
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor
        )
        assert result.get_requested_partitions(SILVER_PRICES) == {corrected}
        assert all(result.get_requested_partitions(k) == {corrected} for k in SILVER_MARKET)
        # once the run has rebuilt the day, nothing more is asked for
        for key in SILVER_MARKET:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=corrected))
        again = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=result.cursor
        )
        assert again.get_requested_partitions(SILVER_PRICES) == set()


def test_many_changed_days_become_one_backfill_not_one_run_per_day(defs) -> None:
    """The production sensor's target and settings, evaluated in-process (user-code evaluation), with 30
    days landed at once: one backfill request covering the 30 silver days, which the single-run backfill
    policy executes as one run."""
    from orchestration.automation_sensor import automation_sensor

    sensor = dg.AutomationConditionSensorDefinition(
        "automation_sensor_in_process",
        target=dg.AssetSelection.assets(*SILVER_MARKET, MARKET_DAYS),
        emit_backfills=automation_sensor.emit_backfills,
        use_user_code_server=True,
    )
    # the same assets with only this sensor: one automation sensor may target an asset
    test_defs = dg.Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        resources=defs.resources,
        sensors=[sensor],
    )
    days = _past_days(30)
    with dg.instance_for_test() as instance:
        _record_reference(instance)
        context = dg.build_sensor_context(instance=instance, definitions=test_defs)
        first = sensor(context)
        _record_bronze_days(instance, days)
        context = dg.build_sensor_context(instance=instance, definitions=test_defs, cursor=first.cursor)
        result = sensor(context)
    requests = result.run_requests
    assert len(requests) == 1, requests
    [request] = requests
    assert request.requires_backfill_daemon()
    subset = request.asset_graph_subset
    assert subset.asset_keys == set(SILVER_MARKET)
    assert set(subset.partitions_subsets_by_asset_key[SILVER_PRICES].get_partition_keys()) == set(days)
    from assets.silver import silver_market

    assert silver_market.backfill_policy == dg.BackfillPolicy.single_run()


def test_landing_a_past_day_requests_silver_for_the_days_it_touched(defs, database_url, settings, tmp_path) -> None:
    """The real producer: the landing asset lands one past day's files and records its market days; the
    automation then asks silver for those days and no other."""
    from assets.bronze.files import files__load_expectations, files__prices_expectations, landing_files
    from assets.shared.resources import LakeResource, WarehouseResource
    from infra import db
    from ingestion.reference import seed_reference_data, simulated_zones
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    day = date.today() - timedelta(days=20)
    zones = [z for z in simulated_zones() if z.zone == "PJM"]
    for market_day in iter_market_days(day, 1, zones=zones, nodes_per_zone=1, seed=3):
        for path in write_landing_files(market_day, settings.resolved_landing_dir, formats=("csv",)):
            os.utime(path, (time.time() - 60, time.time() - 60))  # settled: the folder scan skips fresh files
    selection = dg.AssetSelection.assets(*SILVER_MARKET, MARKET_DAYS)
    with dg.instance_for_test() as instance:
        _record_reference(instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        landed = dg.materialize(
            [landing_files, files__prices_expectations, files__load_expectations],
            instance=instance,
            resources={
                "warehouse": WarehouseResource(database_url=database_url),
                "lake": LakeResource(lake_uri=str(tmp_path / "lake")),
            },
        )
        assert landed.success
        # the bronze suites validate the rows the run appended, without holding anything back
        evaluations = {e.check_name: e for e in landed.get_asset_check_evaluations()}
        assert set(evaluations) == {"files__prices_expectations", "files__load_expectations"}
        for evaluation in evaluations.values():
            assert evaluation.passed and not evaluation.blocking, evaluation.description
            assert evaluation.metadata["row_count"].value > 0
        recorded = {
            e.partition
            for e in instance.get_event_records(
                dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=MARKET_DAYS)
            )
            for e in [e.asset_materialization]
        }
        # PJM's day, read in every zone's timezone, falls on the day and its neighbours at most
        assert day.isoformat() in recorded and len(recorded) <= 3
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor
        )
        assert result.get_requested_partitions(SILVER_PRICES) == recorded


def test_gold_days_build_before_trading_arrives_and_every_day_again_once_it_does(defs) -> None:
    """A deployment whose trading feed is not connected yet still builds its gold days: the silver trading
    tables exist, empty, from the first migration, and market facts and KPIs must not wait for them. When
    trading first arrives, every day built without it is asked for again, not only the recent ones."""
    stg_assets, dim_asset = dg.AssetKey(["gold", "stg_trading__assets"]), dg.AssetKey(["gold", "dim_asset"])
    selection = dg.AssetSelection.assets(stg_assets, dim_asset)
    now = _market_now()
    today, past = now.date().isoformat(), (now.date() - timedelta(days=10)).isoformat()
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, evaluation_time=now
        )
        for name in ("fuel_types", "stg_ref__assets"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["gold", name])))
        without_trading = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor, evaluation_time=now
        )
        built = without_trading.get_requested_partitions(stg_assets)
        assert {today, past} <= built
        # had the trading feed been connected, the days would have waited for its first silver build
        with dg.instance_for_test() as connected:
            for name in ("fuel_types", "stg_ref__assets"):
                connected.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["gold", name])))
            bronze_assets = dg.AssetKey(["bronze", "cdc__assets"])
            connected.report_runless_asset_event(dg.AssetMaterialization(asset_key=bronze_assets))
            waiting = dg.evaluate_automation_conditions(
                defs=defs, instance=connected, asset_selection=selection, evaluation_time=now
            )
            assert waiting.get_requested_partitions(stg_assets) == set()
        assert today in without_trading.get_requested_partitions(dim_asset)
        for day in built:
            for key in (stg_assets, dim_asset):
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day))
        settled = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=without_trading.cursor, evaluation_time=now
        )
        assert settled.get_requested_partitions(stg_assets) == set()

        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=dg.AssetKey(["silver", "trading__assets"]))
        )
        arrived = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=settled.cursor, evaluation_time=now
        )
        assert arrived.get_requested_partitions(stg_assets) == built
        for day in built:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stg_assets, partition=day))
        rebuilt = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=arrived.cursor, evaluation_time=now
        )
        # a later trading update is an ordinary one: only the recent days
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=dg.AssetKey(["silver", "trading__assets"]))
        )
        updated = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=rebuilt.cursor, evaluation_time=now
        )
        assert today in updated.get_requested_partitions(stg_assets)
        assert past not in updated.get_requested_partitions(stg_assets)


def _market_now() -> datetime:
    """One instant for all of a test's evaluations. Each evaluation otherwise reads the clock: a market
    midnight (a new day partition) or a cron tick falling between two of them changes what they ask for."""
    from zoneinfo import ZoneInfo

    from infra.settings import get_settings

    return datetime.now(ZoneInfo(get_settings().market_timezone))


def _gold_built(instance: dg.DagsterInstance, name: str, partition: str | None = None) -> None:
    event = dg.AssetMaterialization(asset_key=dg.AssetKey(["gold", name]), partition=partition)
    instance.report_runless_asset_event(event)


def test_the_kpis_of_a_day_go_with_its_market_facts_and_again_with_its_trading_facts(defs) -> None:
    """The real-time minute KPIs are written into `kpi_values` once the table exists, so a day's KPIs go with
    its market facts and do not wait for the first build of the trading facts (on a cold start a chain of runs
    behind the trading feed); the day is built again when the trading facts' day arrives."""
    kpis = dg.AssetKey(["gold", "kpi_values"])
    [day] = _past_days(1)
    market_facts = ["fct_prices_hourly", "fct_prices_5min", "fct_load_hourly", "fct_generation_hourly"]
    with dg.instance_for_test() as instance:
        cursor = None

        def requested() -> set[str]:
            nonlocal cursor
            result = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(kpis), cursor=cursor
            )
            cursor = result.cursor
            return result.get_requested_partitions(kpis)

        requested()
        for name in ("dim_zone", "dim_calendar"):
            _gold_built(instance, name)
        for name in market_facts[:-1]:
            _gold_built(instance, name, day)
        assert requested() == set(), "a market fact of the day is still missing"
        _gold_built(instance, market_facts[-1], day)
        assert requested() == {day}
        _gold_built(instance, "kpi_values", day)
        assert requested() == set()
        _gold_built(instance, "fct_bids", day)
        assert requested() == {day}


def test_a_trading_change_that_fails_its_blocking_check_stays_out_of_gold(defs) -> None:
    """Dagster's blocking checks stop the children of the same run only. A silver trading table whose latest
    check failed must not reach gold in a later run either: the staging days wait for the correction, and
    whatever joins them (the KPIs) goes on from the last good state."""
    bids, stg_bids = dg.AssetKey(["silver", "trading__bids"]), dg.AssetKey(["gold", "stg_trading__bids"])
    selection = dg.AssetSelection.assets(stg_bids)
    today = date.today().isoformat()

    def bids_check(passed: bool) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=bids, check_name="trading__bids_expectations", passed=passed, blocking=True
        )

    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["silver", "ref__zones"])))
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        for day in first.get_requested_partitions(stg_bids):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stg_bids, partition=day))
        settled = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor
        )
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=bids))
        instance.report_runless_asset_event(bids_check(passed=False))
        held = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=settled.cursor
        )
        assert held.get_requested_partitions(stg_bids) == set()
        # the trading system's correction passes the check: the change reaches gold
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=bids))
        instance.report_runless_asset_event(bids_check(passed=True))
        corrected = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=held.cursor
        )
        assert today in corrected.get_requested_partitions(stg_bids)


def test_tomorrows_forecast_is_built_once_todays_facts_exist(defs) -> None:
    """A platform that has just caught up builds tomorrow's forecast (and its optimizations) at once, not at
    the next gate-closure or hourly cron tick."""
    forecasts = dg.AssetKey(["gold", "forecasts"])
    now = _market_now()
    today = now.date()
    tomorrow = (today + timedelta(days=1)).isoformat()
    selection = dg.AssetSelection.assets(forecasts)
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, evaluation_time=now
        )
        assert first.get_requested_partitions(forecasts) == set()  # no facts yet
        for name in ("fct_prices_hourly", "fct_load_hourly"):
            _gold_built(instance, name, today.isoformat())
        ready = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor, evaluation_time=now
        )
        assert ready.get_requested_partitions(forecasts) == {tomorrow}
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=forecasts, partition=tomorrow))
        again = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=ready.cursor, evaluation_time=now
        )
        assert again.get_requested_partitions(forecasts) == set()


@pytest.mark.parametrize("partitioned", [True, False], ids=["day_partitions", "unpartitioned"])
def test_a_change_landing_while_its_child_runs_is_rebuilt_after_that_run(partitioned: bool) -> None:
    """A correction that lands while its day is being rebuilt was read by nobody: the run under way started
    before it. Its end must not count as handling the change; the day is asked for again once it is done."""
    import threading

    from assets.shared.automation import day_partitions, unpartitioned

    days = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
    day = (date.today() - timedelta(days=40)).isoformat()
    hold, release = threading.Event(), threading.Event()

    @dg.asset(partitions_def=days)
    def parent() -> None: ...

    @dg.asset(
        partitions_def=days if partitioned else None,
        deps=[parent],
        automation_condition=day_partitions() if partitioned else unpartitioned(),
    )
    def child() -> None:
        if hold.is_set():
            assert release.wait(HELD_RUN_TIMEOUT_S)

    defs = dg.Definitions(assets=[parent, child])
    selection = dg.AssetSelection.assets(child)
    child_partition = day if partitioned else None
    with dg.instance_for_test() as instance:
        assert dg.materialize([parent], partition_key=day, instance=instance).success
        assert dg.materialize([child], partition_key=child_partition, instance=instance).success
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection).cursor
        rebuild = threading.Thread(
            target=dg.materialize, args=([child],), kwargs={"instance": instance, "partition_key": child_partition}
        )
        hold.set()
        rebuild.start()
        try:
            deadline = time.monotonic() + 30
            while not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                assert time.monotonic() < deadline, "the rebuild never started"
                time.sleep(0.1)
            # the correction (a runless event: a second in-process run would race the first for the logging setup)
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=parent.key, partition=day))
            during = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=selection, cursor=cursor
            )
            assert during.total_requested == 0  # one run of a partition at a time
        finally:
            release.set()
            rebuild.join()
        after = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=during.cursor
        )
        assert after.total_requested == 1, "the correction was swallowed by the run that never read it"
        settled = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=after.cursor
        )
        assert settled.total_requested == 0


@pytest.mark.parametrize("first_build", [True, False], ids=["first_build", "rebuild"])
def test_a_day_goes_with_its_silver_while_a_dimension_is_first_built_but_waits_for_a_rebuild(
    first_build: bool,
) -> None:
    """On a cold start the dimensions are being built (the reference run) when the first days land. A day asked
    for then goes in one run with its silver, its dbt step ordered after the dimensions' by the dbt pool; the
    dimensions' first build, ending while that run is under way, is then no change to rebuild it for. A
    dimension being rebuilt holds the day back as any parent does: the day would read it half done."""
    import threading

    from assets.shared.automation import day_partitions

    days = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
    # a recent day: a dimension's update rebuilds the recent days, but not its first build under the day's run
    day = (date.today() - timedelta(days=1)).isoformat()
    holds = {"dimension": (threading.Event(), threading.Event()), "fact": (threading.Event(), threading.Event())}

    def held(name: str) -> None:
        hold, release = holds[name]
        if hold.is_set():
            assert release.wait(HELD_RUN_TIMEOUT_S)

    @dg.asset(partitions_def=days)
    def silver_day() -> None: ...

    @dg.asset(pool="dbt")
    def dimension() -> None:
        held("dimension")

    dimensions = dg.AssetSelection.assets(dimension)

    @dg.asset(
        partitions_def=days,
        deps=[silver_day, dimension],
        automation_condition=day_partitions(dimensions, building_deps=dimensions),
    )
    def fact() -> None:
        held("fact")

    defs = dg.Definitions(assets=[silver_day, dimension, fact])
    selection = dg.AssetSelection.assets(fact)

    def start(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, **kwargs: str) -> threading.Thread:
        holds[asset.key.path[-1]][0].set()
        started = len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])))
        thread = threading.Thread(target=dg.materialize, args=([asset],), kwargs={"instance": instance, **kwargs})
        thread.start()
        deadline = time.monotonic() + 30
        while len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))) == started:
            assert time.monotonic() < deadline, f"{asset.key} never started"
            time.sleep(0.1)
        return thread

    def finish(name: str, thread: threading.Thread) -> None:
        holds[name][1].set()
        thread.join()

    with dg.instance_for_test() as instance:
        if not first_build:
            assert dg.materialize([dimension], instance=instance).success
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection).cursor
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=silver_day.key, partition=day))
        building = start(instance, dimension)
        try:
            during = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=selection, cursor=cursor
            )
            assert during.get_requested_partitions(fact.key) == ({day} if first_build else set())
            if first_build:
                # the day's run is under way when the dimension's first build ends
                day_run = start(instance, fact, partition_key=day)
                finish("dimension", building)
                finish("fact", day_run)
        finally:
            for _, release in holds.values():
                release.set()
            building.join()
        after = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=during.cursor
        )
        # the first build asks for nothing more; the day held back by the rebuild is asked for now
        assert after.get_requested_partitions(fact.key) == (set() if first_build else {day})


def test_a_day_goes_while_an_optional_parent_is_first_built_and_again_once_it_is() -> None:
    """The KPIs beside the trading facts on a cold start: the trading facts' first build, queued or running,
    does not hold the KPI day back (the real-time writer needs the table); its end asks for the day again,
    even when the day's own run, started earlier, ended between the same two ticks. A rebuild of the optional
    parent under way holds the day back as any parent does."""
    import threading

    from assets.shared.automation import day_partitions

    days = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
    day = (date.today() - timedelta(days=1)).isoformat()
    releases = {"trading_fact": threading.Event(), "kpis": threading.Event()}

    @dg.asset(partitions_def=days)
    def market_fact() -> None: ...

    @dg.asset(partitions_def=days)
    def trading_fact() -> None:
        assert releases["trading_fact"].wait(HELD_RUN_TIMEOUT_S)

    @dg.asset(
        partitions_def=days,
        deps=[market_fact, trading_fact],
        automation_condition=day_partitions(optional_day_deps=dg.AssetSelection.assets(trading_fact)),
    )
    def kpis() -> None:
        assert releases["kpis"].wait(HELD_RUN_TIMEOUT_S)

    defs = dg.Definitions(assets=[market_fact, trading_fact, kpis])
    selection = dg.AssetSelection.assets(kpis)

    def start(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> threading.Thread:
        releases[asset.key.path[-1]].clear()
        started = len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])))
        thread = threading.Thread(
            target=dg.materialize, args=([asset],), kwargs={"instance": instance, "partition_key": day}
        )
        thread.start()
        deadline = time.monotonic() + 30
        while len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))) == started:
            assert time.monotonic() < deadline, f"{asset.key} never started"
            time.sleep(0.1)
        return thread

    def finish(asset: dg.AssetsDefinition, thread: threading.Thread) -> None:
        releases[asset.key.path[-1]].set()
        thread.join()

    def evaluate(instance: dg.DagsterInstance, cursor) -> dg.EvaluateAutomationConditionsResult:
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection, cursor=cursor)

    with dg.instance_for_test() as instance:
        cursor = evaluate(instance, None).cursor
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=market_fact.key, partition=day))
        trading_run = start(instance, trading_fact)
        kpi_run = None
        try:
            first_build = evaluate(instance, cursor)
            assert first_build.get_requested_partitions(kpis.key) == {day}
            kpi_run = start(instance, kpis)
            running = evaluate(instance, first_build.cursor)
            assert running.get_requested_partitions(kpis.key) == set()
            # between two ticks, the day's run ends, then the trading fact's first build
            finish(kpis, kpi_run)
            finish(trading_fact, trading_run)
        finally:
            for release in releases.values():
                release.set()
            trading_run.join()
            if kpi_run is not None:
                kpi_run.join()
        arrived = evaluate(instance, running.cursor)
        assert arrived.get_requested_partitions(kpis.key) == {day}
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=kpis.key, partition=day))
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=market_fact.key, partition=day))
        rebuild = start(instance, trading_fact)
        try:
            during_rebuild = evaluate(instance, arrived.cursor)
            assert during_rebuild.get_requested_partitions(kpis.key) == set()
        finally:
            finish(trading_fact, rebuild)
        after = evaluate(instance, during_rebuild.cursor)
        assert after.get_requested_partitions(kpis.key) == {day}
