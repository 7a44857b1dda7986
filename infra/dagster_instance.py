"""The Dagster instance: `dagster.yaml` in `<home>/dagster_home`, storing runs, events and schedules in Postgres.

The storage URL is read by Dagster from the `OPTIBID_DATABASE_URL` variable at run time (never written to
disk), so a password in the URL stays in the environment.

Concurrency keeps the two-core default responsive: at most one run per core (two at least, four at most), and
one run per pool at a time (`spark` for the silver Spark jobs, `clickhouse_export` for the exports), so the
automation's runs queue instead of thrashing. Each queued run waits for its pool as a whole (run granularity):
a backfill of 30 days is one run holding one slot. Queued runs leave by priority (`dagster/priority`): the
path from a landed file to gold first (`orchestration.automation_sensor`); what follows gold holds one slot at
most.

A busy machine or a restarting code server must not stall the automation: a run the code server could not
start is launched again for five minutes (measured: a code server restart took 100 s at a load average of 20
on two cores, `tests/platform/test_dagster_services.py`), and a run whose worker died is retried; a failed
asset or blocking check is final (the automation does not retry a failed partition by itself either,
`assets/shared/automation.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from infra.settings import Settings

# A run is one Python process (the in-process executor) plus its dbt or Spark work: more runs than cores only
# share the cores, and the run a landed day waits for takes twice as long (measured on two cores: three runs
# at once doubled the silver-and-gold run of the soak test).
MAX_CONCURRENT_RUNS = max(2, min(4, os.cpu_count() or 2))
POOL_LIMIT = 1
DOWNSTREAM_RUN_SLOTS = 1

DAGSTER_YAML = f"""\
# Written by `optibid`; regenerate rather than edit.
storage:
  postgres:
    postgres_url:
      env: OPTIBID_DATABASE_URL
concurrency:
  runs:
    max_concurrent_runs: {MAX_CONCURRENT_RUNS}  # one Spark run (its pool), the rest dbt and Python runs
    # What follows gold (forecasts, optimizations, weekly ML, exports) holds at most one slot: the others stay
    # free for the landing, CDC and warehouse runs (`assets.shared.automation.TIER_TAG`).
    tag_concurrency_limits:
      - key: optibid/tier
        value: downstream
        limit: {DOWNSTREAM_RUN_SLOTS}
  pools:
    default_limit: {POOL_LIMIT}  # spark, clickhouse_export: one run of each at a time
    granularity: run
run_queue:
  # Every hop of the pipeline (landing -> silver -> gold) waits in the queue once: look every second, not five.
  dequeue_interval_seconds: 1
  dequeue_use_threads: true
  # A code server too busy to answer within its deadline (both cores taken), or restarting (a new version, a
  # crash: loading the definitions takes minutes on a loaded machine), is no reason to fail a run that has not
  # started: it stays queued and is launched again, for up to 10 x 30 s. A run that failed this way is not
  # retried by `run_retries` once the code server is back, so this window must cover a restart.
  max_user_code_failure_retries: 10
  user_code_failure_retry_delay: 30
run_retries:
  # A run whose worker crashed or never started is retried; a failed asset or blocking check is not (it would
  # fail the same way, and its alert is already out).
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
run_monitoring:
  enabled: true
# Sensor ticks in parallel: a slow evaluation (the automation's hundreds of partitions on a loaded machine) must
# not hold back the landing folder's sensor, nor the warehouse path's automation the downstream one's.
sensors:
  use_threads: true
  num_workers: 4
auto_materialize:
  use_threads: true
  num_workers: 2
telemetry:
  enabled: false
"""


def write_dagster_home(settings: Settings) -> Path:
    """Create `DAGSTER_HOME` with the instance config; its path."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home
