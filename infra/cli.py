"""`optibid`: the one command-line home of the platform.

`optibid services up|down|status` runs the embedded services, `optibid simulate` produces market data,
`optibid demo` runs the platform end to end; the areas mount their own sub-commands here
(`optibid ingest …`, `optibid forecast …`, `optibid users …`). Heavy imports stay inside commands so
`optibid --help` is instant.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.lake import LakeError
from infra.services import ServiceError
from infra.settings import Settings, get_settings

app = typer.Typer(help="OptiBid: a data platform for power-market teams.", no_args_is_help=True)
services_app = typer.Typer(help="Start, stop and inspect the embedded services.", no_args_is_help=True)
simulate_app = typer.Typer(help="Produce realistic simulated market data.", no_args_is_help=True)
ingest_app = typer.Typer(help="Land data in bronze.", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(simulate_app, name="simulate")
app.add_typer(ingest_app, name="ingest")

console = Console()


def progress() -> Progress:
    """The progress bar every long CLI command uses."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def fail(message: str) -> typer.Exit:
    """Print one clear error line and exit non-zero (no traceback for configuration problems)."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def export_service_env(settings: Settings) -> dict[str, str]:
    """Start or reach the services and export their addresses for every child process; the variables set."""
    from infra import db
    from infra.dagster_instance import write_dagster_home
    from infra.lake import lake_from_settings
    from infra.services import ensure_services

    lake_from_settings(settings).ensure_writable()
    endpoints = ensure_services(settings)
    db.migrate(endpoints.database_url)
    exported = {
        "OPTIBID_HOME": str(settings.home_dir),
        "OPTIBID_DATABASE_URL": endpoints.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
        "DAGSTER_HOME": str(write_dagster_home(settings)),
    }
    os.environ.update(exported)
    get_settings.cache_clear()
    return exported


@services_app.command("up")
def services_up() -> None:
    """Start the embedded Postgres and broker (or check the configured ones) and apply migrations."""
    settings = get_settings()
    try:
        exported = export_service_env(settings)
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    from infra.services import redact

    for name, value in exported.items():
        shown = redact(value) if name == "OPTIBID_DATABASE_URL" else value
        console.print(f"export {name}={shown!r}")


@services_app.command("down")
def services_down() -> None:
    """Stop every embedded service started under this OPTIBID_HOME."""
    from infra.services import stop_services

    stopped = stop_services(get_settings())
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@services_app.command("status")
def services_status() -> None:
    """Where each service is and whether it runs."""
    from infra.services import service_status

    table = Table("service", "status")
    for name, status in service_status(get_settings()).items():
        table.add_row(name, status)
    console.print(table)


@app.command("seed")
def seed() -> None:
    """Load the reference dimensions (zones, nodes, organizations, assets, users)."""
    from infra import db
    from ingestion.reference import seed_reference_data

    settings = get_settings()
    try:
        env = export_service_env(settings)
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    with db.connect(env["OPTIBID_DATABASE_URL"]) as conn:
        counts = seed_reference_data(conn)
    console.print(counts)


@simulate_app.command("market")
def simulate_market_files(
    days: Annotated[int, typer.Option(min=1, help="How many days to simulate.")] = 7,
    start: Annotated[str | None, typer.Option(help="First UTC day (YYYY-MM-DD); default: `days` days ago.")] = None,
    nodes_per_zone: Annotated[int, typer.Option(min=0, help="Pricing nodes per zone (5-minute prices).")] = 4,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same data.")] = 42,
    out: Annotated[Path | None, typer.Option(help="Folder for the files; default the landing folder.")] = None,
) -> None:
    """Simulate prices, load, generation and weather and drop them as files in the landing folder."""
    from ingestion.simulator.files import write_landing_files
    from ingestion.simulator.market import iter_market_days

    first = date.fromisoformat(start) if start else date.today() - timedelta(days=days)
    target = out or get_settings().resolved_landing_dir
    written = 0
    with progress() as bar:
        task = bar.add_task("simulating days", total=days)
        for day in iter_market_days(first, days, nodes_per_zone=nodes_per_zone, seed=seed_value):
            written += len(write_landing_files(day, target))
            bar.advance(task)
    console.print(f"wrote {written} files to {target}")


@simulate_app.command("trading")
def simulate_trading(
    events: Annotated[int, typer.Option(min=1, help="How many change events to produce.")] = 20_000,
    ticks: Annotated[int, typer.Option(min=0, help="Plain-JSON real-time price ticks to produce as well.")] = 0,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same events.")] = 42,
    with_schema: Annotated[bool, typer.Option(help="Wrap keys and values in the Kafka Connect schema.")] = False,
) -> None:
    """Produce the trading system's Debezium change events (bids, trades, assets, orders) to Kafka."""
    from infra.services import kafka_security_config

    settings = get_settings()
    try:
        env = export_service_env(settings)
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    counts = produce_simulated_trading(
        env["KAFKA_BOOTSTRAP_SERVERS"], events, ticks, seed_value, with_schema, kafka_security_config(settings)
    )
    for topic, count in sorted(counts.items()):
        console.print(f"{topic}: {count} events")


def produce_simulated_trading(
    bootstrap: str, events: int, ticks: int, seed: int, with_schema: bool, security: dict[str, object]
) -> dict[str, int]:
    """Produce trading change events (and optional ticks) with a progress bar; counts per topic."""
    import itertools
    from datetime import UTC, datetime

    from ingestion.simulator.trading import market_tick_events, produce_events, trading_events

    start = datetime.combine(date.today() - timedelta(days=7), datetime.min.time(), tzinfo=UTC)
    stream = itertools.chain(
        trading_events(events, seed=seed, start=start, with_schema=with_schema),
        market_tick_events(ticks, seed=seed, start=start),
    )
    with progress() as bar:
        task = bar.add_task("producing events", total=events + ticks)

        def counted():
            for event in stream:
                bar.advance(task)
                yield event

        return produce_events(bootstrap, counted(), security=security)


def _mount_area_commands() -> None:
    """Sub-commands owned by the areas (each area keeps its Typer app next to its library code)."""
    import importlib

    mounts = [
        ("ingestion.cdc.cli", "app", ingest_app, "cdc", "Kafka CDC into bronze."),
        ("ingestion.files.cli", "app", ingest_app, "files", "Uploaded files into bronze."),
        ("ml.forecasting.cli", "app", app, "forecast", "Forecasts and backtests."),
        ("serving_api.cli", "orgs_app", app, "orgs", "Organizations."),
        ("serving_api.cli", "users_app", app, "users", "Users and their roles."),
        ("serving_api.cli", "keys_app", app, "apikeys", "API keys."),
    ]
    for module_name, attribute, parent, name, help_text in mounts:
        module = importlib.import_module(module_name)
        parent.add_typer(getattr(module, attribute), name=name, help=help_text)


@app.command("demo")
def demo(
    days: Annotated[
        int, typer.Option(min=1, help="Days of simulated history (backtests and drift need three weeks).")
    ] = 28,
    serve: Annotated[bool, typer.Option(help="Serve the Dagster UI and the API after materializing.")] = True,
    dagster_port: Annotated[int, typer.Option(help="Dagster UI port.")] = 3000,
    api_port: Annotated[int, typer.Option(help="API port.")] = 8000,
) -> None:
    """Run the platform end to end: services, seed, simulate, materialize every asset, then serve."""
    from infra.demo import materialize_everything, simulate_demo_data

    settings = get_settings()
    try:
        env = export_service_env(settings)
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]services ready[/] (home {settings.home_dir})")
    simulate_demo_data(
        settings,
        database_url=env["OPTIBID_DATABASE_URL"],
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        days=days,
        console=console,
    )
    from infra.demo import MaterializationError, demo_window

    try:
        materialize_everything(*demo_window(days), console=console)
    except MaterializationError as exc:
        raise fail(str(exc)) from None
    if not serve:
        return
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "orchestration.definitions", "-p", str(dagster_port)],
            env={**os.environ, **env},
        ),
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving_api.app:app", "--port", str(api_port)],
            env={**os.environ, **env},
        ),
    ]
    console.print(
        f"[bold green]Dagster UI[/] http://127.0.0.1:{dagster_port}   [bold green]API[/] "
        f"http://127.0.0.1:{api_port}/docs   (Ctrl-C stops everything)"
    )
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        from infra.services import stop_services

        console.print("stopped: " + ", ".join(stop_services(settings)))


_mount_area_commands()


if __name__ == "__main__":
    app()
