"""What `optibid demo` does between starting the services and serving the UI: seed, simulate, materialize.

Materialization goes through `dagster asset materialize` against the Dagster instance, layer by layer,
so every run of the demo is visible in the UI afterwards exactly as a scheduled run would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta

from rich.console import Console

from infra import db
from infra.settings import Settings

# Layers in dependency order; assets of one group are materialized together.
GROUP_ORDER = ("reference", "bronze", "silver", "gold", "ml", "optimization", "exports")


def demo_window(days: int, today: date | None = None) -> tuple[date, date]:
    """The simulated window: the `days` full days before today (first, last inclusive)."""
    last = (today or date.today()) - timedelta(days=1)
    return last - timedelta(days=days - 1), last


def simulate_demo_data(
    settings: Settings, *, database_url: str, bootstrap_servers: str, days: int, console: Console
) -> None:
    """Reference data, a window of market files in the landing folder, and trading CDC events on Kafka."""
    from ingestion.reference import seed_reference_data
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    first, last = demo_window(days)
    # A second `make demo` reuses what the first one simulated instead of producing the events again.
    marker = settings.home_dir / "run" / "demo_simulated.json"
    if marker.exists() and json.loads(marker.read_text()) == {"first": str(first), "last": str(last)}:
        console.print(f"reusing the simulated data of {first}..{last}")
        return
    landing = settings.resolved_landing_dir
    files = 0
    for day in iter_market_days(first, days, nodes_per_zone=4, seed=42):
        files += len(write_landing_files(day, landing))
    console.print(f"simulated {days} days from {first}: {files} files in {landing}")
    from infra.cli import produce_simulated_trading
    from infra.services import kafka_security_config

    counts = produce_simulated_trading(
        bootstrap_servers, 3_000 * days, 2_000, 42, False, kafka_security_config(settings)
    )
    console.print(f"produced {sum(counts.values())} trading change events and ticks to Kafka")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"first": str(first), "last": str(last)}))


def materialize_everything(
    first: date,
    last: date,
    *,
    console: Console,
    groups: tuple[str, ...] = GROUP_ORDER,
    per_day_recent: int = 2,
) -> None:
    """Materialize every asset of `groups`, in order, through the Dagster instance in DAGSTER_HOME (so the
    runs show in the UI). Assets that backfill in one run cover `first`..`last`; assets that need a run per
    day (forecasts, optimizations) cover only the last `per_day_recent` days, as a daily schedule would."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for group in groups:
        keys = [
            k for k in graph.get_all_asset_keys() if graph.get(k).group_name == group and graph.get(k).is_materializable
        ]
        if not keys:
            continue
        unpartitioned = [k for k in keys if graph.get(k).partitions_def is None]
        if unpartitioned:
            _materialize(unpartitioned, None, console, group)
        # One run per partitions definition: a run can only target assets that share one.
        by_partitions: dict[str, list] = {}
        for key in keys:
            if graph.get(key).partitions_def is not None:
                by_partitions.setdefault(str(graph.get(key).partitions_def), []).append(key)
        for partitioned in by_partitions.values():
            single_run = all(
                graph.get(k).backfill_policy is not None
                and graph.get(k).backfill_policy.max_partitions_per_run is None  # single run
                for k in partitioned
            )
            if single_run:
                _materialize(
                    partitioned, f"{first.isoformat()}...{last.isoformat()}", console, f"{group} {first}..{last}"
                )
                continue
            day = max(first, last - timedelta(days=per_day_recent - 1))
            while day <= last:
                _materialize(partitioned, day.isoformat(), console, f"{group} {day}")
                day += timedelta(days=1)


class MaterializationError(RuntimeError):
    """A `dagster asset materialize` run failed; the message carries the end of its output."""


def _materialize(keys: list, partition: str | None, console: Console, label: str) -> None:
    selection = ",".join(key.to_user_string() for key in keys)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "orchestration.definitions",
        "--select",
        selection,
    ]
    if partition and "..." in partition:
        command += ["--partition-range", partition]
    elif partition:
        command += ["--partition", partition]
    console.print(f"[bold]materializing[/] {label}: {len(keys)} assets")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise MaterializationError(f"materializing {label} failed (the run is in the Dagster UI):\n{tail}")
