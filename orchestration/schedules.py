"""Schedules: the time-based floors under the event-driven sensors."""

import dagster as dg

from assets.ml import ml_weekly_schedule
from orchestration.jobs import bronze_cdc_job

bronze_cdc_floor_schedule = dg.ScheduleDefinition(
    name="bronze_cdc_floor",
    job=bronze_cdc_job,
    cron_schedule="*/15 * * * *",
    description="Drains CDC topics every 15 minutes even when the lag sensor stays quiet.",
)

SCHEDULES: list[dg.ScheduleDefinition] = [
    bronze_cdc_floor_schedule,
    ml_weekly_schedule,
]
