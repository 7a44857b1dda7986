"""The one Dagster `Definitions` of OptiBid: every asset, check, resource, job, schedule and sensor."""

from __future__ import annotations

import dagster as dg

from assets import checks, exports, gold, ml, optimization, reference, silver
from assets.bronze import cdc as bronze_cdc
from assets.bronze import files as bronze_files
from infra.settings import get_settings
from orchestration.alerting import ALERT_SENSORS
from orchestration.automation import automation_sensor
from orchestration.jobs import JOBS
from orchestration.resources import resources_from_settings
from orchestration.schedules import SCHEDULES
from orchestration.sensors import SENSORS

_ASSET_MODULES = [reference, bronze_cdc, bronze_files, silver, checks, gold, ml, optimization, exports]

defs = dg.Definitions(
    # AssetSpecs (assets Dagster records but does not materialize) are not found by load_assets_from_modules
    assets=[*dg.load_assets_from_modules(_ASSET_MODULES), bronze_files.market_days],
    asset_checks=dg.load_asset_checks_from_modules(_ASSET_MODULES),
    resources=resources_from_settings(get_settings()),
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=[*SENSORS, automation_sensor, *ALERT_SENSORS],
    # Steps of a run share one process: one SparkSession (~15 s to start) and one code load per run, instead
    # of one per step. Scale out across runs (the run queue), or point SPARK_REMOTE/SPARK_MASTER at a cluster.
    executor=dg.in_process_executor,
)
