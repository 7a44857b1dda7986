"""`optibid`: the one command-line home of the platform.

`optibid services up|down|status` runs the embedded services, `optibid simulate` produces market data,
`optibid demo` runs the platform end to end; the areas mount their own sub-commands here
(`optibid ingest …`, `optibid forecast …`, `optibid users …`). Heavy imports stay inside commands so
`optibid --help` is instant.
"""

from __future__ import annotations

import os
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
    from ingestion.simulator.live import produce_simulated_trading

    with progress() as bar:
        task = bar.add_task("producing events", total=events + ticks)
        counts = produce_simulated_trading(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            events,
            ticks,
            seed_value,
            with_schema,
            kafka_security_config(settings),
            on_event=lambda: bar.advance(task),
        )
    for topic, count in sorted(counts.items()):
        console.print(f"{topic}: {count} events")


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
    days: Annotated[int, typer.Option(min=1, help="Days of simulated market history, today included.")] = 7,
    until_fresh: Annotated[
        bool, typer.Option(help="Stop everything and exit once the platform is fresh (CI, automation).")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for freshness before saying so.")] = 900,
) -> None:
    """Run the platform: services, Dagster (webserver + daemon), the API and the CDC consumer; seed and
    simulate; let the automation bring every layer up to date; then keep a live load flowing until Ctrl-C.

    Addresses come from the settings (OPTIBID_DAGSTER_HOST/PORT, OPTIBID_API_HOST/PORT); the live load from
    OPTIBID_DEMO_TICKS_PER_SECOND, OPTIBID_DEMO_TRADING_EVENTS_PER_SECOND, OPTIBID_DEMO_FILE_INTERVAL_SECONDS.
    """
    from infra.demo import run_demo
    from infra.services import stop_services

    started = time.monotonic()
    settings = get_settings()
    try:
        env = export_service_env(settings)
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]services ready[/] in {time.monotonic() - started:.0f} s (home {settings.home_dir})")
    try:
        code = run_demo(
            get_settings(),
            env,
            days=days,
            until_fresh=until_fresh,
            timeout=timeout,
            console=console,
            services_started_at=started,
        )
    finally:
        console.print("stopped: " + (", ".join(stop_services(settings)) or "no embedded service"))
    raise typer.Exit(code)


_mount_area_commands()


if __name__ == "__main__":
    app()
