"""Great Expectations suites as code for the bronze, silver and gold tables, and a fast pandas runner.

`suites.py` says what each table promises (schema, keys, per-market value ranges, row-count change,
freshness, time-series continuity); `runner.py` validates a pandas DataFrame against a suite in an
ephemeral GX context and returns a plain `SuiteOutcome`; it can also write GX Data Docs. `warehouse.py`
validates a window of a Postgres table, `lake.py` the rows a run appended to a bronze Delta table. No
Dagster here: `assets/shared/expectation_checks.py` turns outcomes into asset checks.
"""
