"""The automation sensor: evaluates the automation condition of every asset after bronze, in every domain.

The conditions themselves are built in `assets.shared.automation` and chosen by each domain; bronze is
started by its own sensors and schedule (`assets.bronze`).
"""

from __future__ import annotations

import dagster as dg

from infra.settings import get_settings

AUTOMATED = dg.AssetSelection.all() - dg.AssetSelection.groups("bronze")

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AUTOMATED,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    emit_backfills=True,
    description="Evaluates the automation conditions of every asset after bronze (assets/shared/automation.py); "
    "several partitions of one asset in a tick become one backfill, run as a single run.",
)
