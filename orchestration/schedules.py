"""Schedules: the time-based floors under the event-driven sensors, on by default.

Everything after bronze runs from automation conditions (orchestration/automation.py), including the
weekly ML assets; only bronze CDC keeps a schedule, as the floor under its lag sensor.
"""

import dagster as dg

from orchestration.jobs import bronze_cdc_job

bronze_cdc_floor_schedule = dg.ScheduleDefinition(
    name="bronze_cdc_floor",
    job=bronze_cdc_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Drains CDC topics every 15 minutes even when the lag sensor stays quiet.",
)

SCHEDULES: list[dg.ScheduleDefinition] = [
    bronze_cdc_floor_schedule,
]
