"""The automation sensors: they evaluate the automation condition of every asset after bronze, in every domain.

The conditions themselves are built in `assets.shared.automation` and chosen by each domain; bronze is
started by its own sensors and schedule (`assets.bronze`).

Two sensors split the assets by what their runs are waiting for, and tag the runs with a queue priority
(`dagster/priority`): the warehouse path (reference data, silver, gold) is what "a file landed, the API serves
it" waits on, so its runs leave the queue before the analyses that follow it (forecasts, optimizations, the
weekly ML, the ClickHouse export). On two cores a cold start queues a dozen runs, and without priorities a landed
day would wait behind backtests. Each sensor also evaluates only its own assets, so a tick of the warehouse path
does not wait for the ML assets' conditions to be evaluated.
"""

from __future__ import annotations

import dagster as dg

from assets.shared.automation import DOWNSTREAM_RUN_TAGS, WAREHOUSE_RUN_TAGS
from infra.settings import get_settings

WAREHOUSE = dg.AssetSelection.groups("reference", "silver", "gold")
AUTOMATED = dg.AssetSelection.all() - dg.AssetSelection.groups("bronze")
DOWNSTREAM = AUTOMATED - WAREHOUSE

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=WAREHOUSE,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    emit_backfills=True,
    run_tags=WAREHOUSE_RUN_TAGS,
    description="Evaluates the automation conditions of reference data, silver and gold "
    "(assets/shared/automation.py); several partitions of one asset in a tick become one backfill, run as a "
    "single run. Its runs go first in the run queue.",
)

downstream_automation_sensor = dg.AutomationConditionSensorDefinition(
    "downstream_automation_sensor",
    target=DOWNSTREAM,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    emit_backfills=True,
    run_tags=DOWNSTREAM_RUN_TAGS,
    description="Evaluates the automation conditions of what follows gold: forecasts, optimizations, the "
    "weekly ML assets, the ClickHouse export and the nightly operations (assets/shared/automation.py). Its "
    "runs queue behind the warehouse path's and hold one run slot at most.",
)

AUTOMATION_SENSORS = [automation_sensor, downstream_automation_sensor]
