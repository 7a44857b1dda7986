"""The floor every other package stands on.

What belongs here: the settings (`settings`, the one reader of the environment), the warehouse's connections
and migrations (`db`, `sql/`), the lake (`lake`), the embedded services and their processes (`services`,
`clickhouse`, `processes`), the Dagster instance's configuration file (`dagster_instance`, no Dagster import),
the Spark session and dbt helpers (`spark`, `dbt`), the warehouse signals the pipeline sends (`signals`),
alert delivery (`alerts`) and the deployment files (`deploy/`).

What does not: anything that imports `ingestion`, `ml`, `expectations`, `assets`, `orchestration`,
`serving_api` or `app`, by an import statement or a module name in a string; the command line and the demo
live in `app/`. `tests/foundation/test_layers.py` checks both.
"""
