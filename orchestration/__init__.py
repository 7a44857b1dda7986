"""What spans every domain: the one `Definitions` (`definitions.py`, the only module that imports every
domain), the automation sensor that evaluates every domain's conditions, and the alert sensors.

A domain's assets, checks, jobs, schedules and sensors live in its module under `assets/`; the Dagster
pieces the domains share (resources, partitions, automation conditions) in `assets/shared/`.
"""
