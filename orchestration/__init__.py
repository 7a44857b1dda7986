"""Dagster wiring: the one `Definitions`, its resources, partitions, jobs, schedules and sensors."""
