"""Schedules: the time-based floors under the event-driven sensors."""

import dagster as dg

from assets.ml import backtests, drift_report
from infra.settings import get_settings
from orchestration.jobs import bronze_cdc_job

bronze_cdc_floor_schedule = dg.ScheduleDefinition(
    name="bronze_cdc_floor",
    job=bronze_cdc_job,
    cron_schedule="*/15 * * * *",
    description="Drains CDC topics every 15 minutes even when the lag sensor stays quiet.",
)

ml_weekly_schedule = dg.ScheduleDefinition(
    name="ml_weekly_schedule",
    cron_schedule="0 3 * * 1",
    target=[backtests, drift_report],
    execution_timezone=get_settings().market_timezone,
    description="Monday 03:00: backtests (champion selection) and drift reports.",
)

SCHEDULES: list[dg.ScheduleDefinition] = [
    bronze_cdc_floor_schedule,
    ml_weekly_schedule,
]
