"""The Dagster layer, one module or package per domain; each keeps that domain's assets, checks, jobs,
schedules and sensors together and declares them in its `defs` (`orchestration.definitions` merges them).

- `bronze/cdc.py`: Kafka CDC and ticks into bronze Delta; lag and commits sensors, floor schedule.
- `bronze/files.py`: the landing folder into bronze Delta; landing sensor and job.
- `reference.py`: the reference dimensions in `silver.ref__*`.
- `silver.py`: Spark builds of silver, and their blocking expectation checks.
- `gold.py`: the dbt project, and the expectation checks of the gold tables.
- `forecasting.py`: forecasts, backtests, drift and anomalies. `optimization.py`: storage, bids, unit
  commitment. `exports.py`: ClickHouse replication and the BI access layer.
- `shared/`: resources, partitions, automation conditions, check factories: below every domain.

Library logic (ingestion, Spark, SQL, models, solvers, suites) does not belong here: it lives in
`ingestion/`, `ml/`, `expectations/` and `dbt_project/`, which never import Dagster. Nothing here imports
`orchestration`.
"""
