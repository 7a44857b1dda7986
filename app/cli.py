"""`optibid`: the one command line of the platform.

What belongs here: the Typer app and its top-level commands: `optibid services up|down|status` runs the
embedded services, `optibid seed` loads the reference data, `optibid simulate` produces market data,
`optibid demo` runs the platform end to end (`app/demo.py`). The areas' own sub-commands are mounted here
from next to their library code (`optibid ingest cdc|files`, `optibid forecast`, `optibid orgs|users|apikeys`).
What does not: the work itself; each command calls a library function. Heavy imports stay inside commands
so that `optibid --help` stays quick.

The CLI starts the processes of the platform, so it is one of the places that writes the environment: the
service addresses it resolves are exported for every child it starts (`service_env`).
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

from app import operations_cli
from infra.lake import LakeError
from infra.services import ServiceError
from infra.settings import Settings, get_settings
from ingestion.cdc import cli as cdc_cli
from ingestion.files import cli as files_cli
from ml.forecasting import cli as forecasting_cli
from serving_api import cli as serving_api_cli

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


def service_env(settings: Settings) -> dict[str, str]:
    """Start or reach the services, migrate the warehouse and export the services' addresses for every child
    process; the variables set. A service or lake problem ends the command with one line naming the setting
    to fix, not a traceback."""
    from infra import db
    from infra.dagster_instance import write_dagster_home
    from infra.lake import lake_from_settings
    from infra.services import ensure_services

    try:
        lake_from_settings(settings).ensure_writable()
        endpoints = ensure_services(settings)
        db.migrate(endpoints.database_url)
        exported = {
            "OPTIBID_HOME": str(settings.home_dir),
            "OPTIBID_DATABASE_URL": endpoints.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
            "DAGSTER_HOME": str(write_dagster_home(settings)),
        }
    except (ServiceError, LakeError) as exc:
        raise fail(str(exc)) from None
    os.environ.update(exported)
    get_settings.cache_clear()
    return exported


@services_app.command("up")
def services_up() -> None:
    """Start the embedded Postgres and broker (or check the configured ones) and apply migrations."""
    from infra.services import redact

    for name, value in service_env(get_settings()).items():
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

    env = service_env(get_settings())
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
    from ingestion.simulator.live import produce_simulated_trading

    settings = get_settings()
    env = service_env(settings)

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
    from app.demo import run_demo
    from infra.services import stop_services

    started = time.monotonic()
    settings = get_settings()
    env = service_env(settings)
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


@app.command("serve")
def serve() -> None:
    """Serve the tools of a platform that runs already (Dagster and the API started elsewhere): the landing
    page with the reports, freshness and alerts, and the MLflow UI on the platform's tracking store, until
    Ctrl-C.

    Addresses come from the settings (OPTIBID_PORTAL_HOST/PORT, OPTIBID_MLFLOW_UI_HOST/PORT); the links to
    Dagster and the API from OPTIBID_DAGSTER_HOST/PORT and OPTIBID_API_HOST/PORT.
    """
    import signal

    from app.demo import print_tool_urls, sigterm_as_interrupt, tool_options
    from app.platform import PlatformError, PlatformProcesses, default_log_dir

    settings = get_settings()
    env = service_env(settings)
    platform = PlatformProcesses(
        env={**os.environ, **env},
        dagster_home=Path(env["DAGSTER_HOME"]),
        log_dir=default_log_dir(settings.home_dir),
        **tool_options(settings),
    )
    try:
        with sigterm_as_interrupt():
            try:
                platform.start_tools()
                platform.wait_until_tools_serve()
            except PlatformError as exc:
                raise fail(str(exc)) from None
            print_tool_urls(platform, console)
            console.print(f"logs in {platform.log_dir}.  Ctrl-C stops serving.")
            while not platform.dead():
                time.sleep(2)
            for name in platform.dead():
                proc = platform.processes[name]
                console.print(f"[bold red]{name} exited[/] (log {proc.log_path}):\n{proc.tail()}")
            raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stop short and leave the servers holding their ports.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        platform.stop()


# Sub-commands owned by the areas: each keeps its Typer app next to its library code.
ingest_app.add_typer(cdc_cli.app, name="cdc", help="Kafka CDC into bronze.")
ingest_app.add_typer(files_cli.app, name="files", help="Uploaded files into bronze.")
app.add_typer(forecasting_cli.app, name="forecast", help="Forecasts and backtests.")
app.add_typer(serving_api_cli.orgs_app, name="orgs", help="Organizations.")
app.add_typer(serving_api_cli.users_app, name="users", help="Users and their roles.")
app.add_typer(serving_api_cli.keys_app, name="apikeys", help="API keys.")
app.add_typer(serving_api_cli.auth_app, name="auth", help="Access-token signing keys.")
app.add_typer(operations_cli.backup_app, name="backup", help="Encrypted backups and restores.")
app.add_typer(
    operations_cli.archive_app, name="archive", help="Cold tier: archived days and raw payloads, restore, retention."
)


if __name__ == "__main__":
    app()
