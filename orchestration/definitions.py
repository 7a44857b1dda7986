"""The one Dagster `Definitions` of OptiBid, merged from the domains, with the resources, the in-process
executor and the sensors that span every domain. The only module that imports every domain.

Each domain module declares its own `defs` (assets, checks, jobs, schedules, sensors).
"""

from __future__ import annotations

import dagster as dg

from assets import exports, forecasting, gold, optimization, reference, silver
from assets.bronze import cdc as bronze_cdc
from assets.bronze import files as bronze_files
from assets.shared.resources import resources_from_settings
from infra.settings import get_settings
from orchestration.alerting import ALERT_SENSORS
from orchestration.automation_sensor import AUTOMATION_SENSORS

DOMAIN_DEFINITIONS: list[dg.Definitions] = [
    reference.defs,
    bronze_cdc.defs,
    bronze_files.defs,
    silver.defs,
    gold.defs,
    forecasting.defs,
    optimization.defs,
    exports.defs,
]

defs = dg.Definitions.merge(
    *DOMAIN_DEFINITIONS,
    dg.Definitions(
        resources=resources_from_settings(get_settings()),
        sensors=[*AUTOMATION_SENSORS, *ALERT_SENSORS],
        # Steps of a run share one process: one SparkSession (~15 s to start) and one code load per run,
        # instead of one per step. Scale out across runs (the run queue), or point SPARK_REMOTE/SPARK_MASTER
        # at a cluster.
        executor=dg.in_process_executor,
    ),
)
