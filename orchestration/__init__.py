"""What spans every domain: the one `Definitions` (`definitions.py`, the only module that imports every
domain), the automation sensors that evaluate every domain's conditions, the alert sensors, and the commands
of the Dagster services that load them (`dagster_services.py`).

A domain's assets, checks, jobs, schedules and sensors live in its module under `assets/`; the Dagster
pieces the domains share (resources, partitions, automation conditions) in `assets/shared/`.
"""
