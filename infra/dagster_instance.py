"""The Dagster instance: `dagster.yaml` in `<home>/dagster_home`, storing runs, events and schedules in Postgres.

The storage URL is read by Dagster from the `OPTIBID_DATABASE_URL` variable at run time (never written to
disk), so a password in the URL stays in the environment.

Concurrency keeps the two-core default responsive: at most three runs at once, and one run per pool at a
time (`spark` for the silver Spark jobs, `clickhouse_export` for the exports), so the automation's runs
queue instead of thrashing. Each queued run waits for its pool as a whole (run granularity): a backfill of
30 days is one run holding one slot.
"""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings

MAX_CONCURRENT_RUNS = 3
POOL_LIMIT = 1

DAGSTER_YAML = f"""\
# Written by `optibid`; regenerate rather than edit.
storage:
  postgres:
    postgres_url:
      env: OPTIBID_DATABASE_URL
concurrency:
  runs:
    max_concurrent_runs: {MAX_CONCURRENT_RUNS}  # one Spark run (its pool), the rest dbt and Python runs
  pools:
    default_limit: {POOL_LIMIT}  # spark, clickhouse_export: one run of each at a time
    granularity: run
run_queue:
  # Every hop of the pipeline (landing -> silver -> gold) waits in the queue once: look every second, not five.
  dequeue_interval_seconds: 1
  dequeue_use_threads: true
run_monitoring:
  enabled: true
telemetry:
  enabled: false
"""


def write_dagster_home(settings: Settings) -> Path:
    """Create `DAGSTER_HOME` with the instance config; its path."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home
