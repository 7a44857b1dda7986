"""Schedules: the time-based floors under the event-driven sensors."""

from __future__ import annotations

import dagster as dg

from assets.bronze.cdc import bronze_cdc_floor_schedule
from assets.ml import ml_weekly_schedule

SCHEDULES: list[dg.ScheduleDefinition] = [
    # areas append their schedules here
    bronze_cdc_floor_schedule,
    ml_weekly_schedule,
]
