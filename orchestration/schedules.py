"""Schedules: the time-based floors under the event-driven sensors."""

from __future__ import annotations

import dagster as dg

SCHEDULES: list[dg.ScheduleDefinition] = [
    # areas append their schedules here
]
