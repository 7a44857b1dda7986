"""The Dagster instance: `dagster.yaml` in `<home>/dagster_home`, storing runs, events and schedules in Postgres.

The storage URL is read by Dagster from the `OPTIBID_DATABASE_URL` variable at run time (never written to
disk), so a password in the URL stays in the environment.
"""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings

DAGSTER_YAML = """\
# Written by `optibid`; regenerate rather than edit.
storage:
  postgres:
    postgres_url:
      env: OPTIBID_DATABASE_URL
run_queue:
  max_concurrent_runs: 2  # two cores: more concurrent Spark/dbt runs would only thrash
telemetry:
  enabled: false
"""


def write_dagster_home(settings: Settings) -> Path:
    """Create `DAGSTER_HOME` with the instance config; its path."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home
