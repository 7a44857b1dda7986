"""What `optibid demo` does: start the platform, feed it simulated data, and report when it is fresh.

What belongs here: the demo's simulated history (seeded reference data, market files, trading events), its
API key, the freshness it waits for and the loop that keeps the platform alive. It is part of the
application layer, so it may look at the Dagster instance and start the platform (`app/platform.py`).
What does not: materializing assets. The platform's own sensors, schedules and automation conditions bring
every layer up to date; this module only watches the warehouse and the run queue until they have. The
simulators themselves are library code (`ingestion/simulator/`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rich.console import Console

from infra import db
from infra.settings import Settings

NODES_PER_ZONE = 4
SEED = 42
TRADING_EVENTS_PER_DAY = 3_000
HISTORY_TICKS = 2_000
# The day-ahead outputs that must exist for tomorrow's delivery day before the demo calls itself fresh.
DAY_AHEAD_ASSETS = (
    ("forecasts", ("gold", "forecasts")),
    ("optimization", ("gold", "storage_schedules")),
    ("optimization", ("gold", "bid_curves")),
    ("optimization", ("gold", "unit_commitment")),
)
MAX_RESTARTS = 5
DEMO_SENSOR_INTERVAL_SECONDS = 15


def demo_window(days: int, today: date | None = None) -> tuple[date, date]:
    """The simulated window: `days` full market days up to and including today (first, last inclusive).

    Today is simulated whole, as a day-ahead market knows it: its day-ahead prices were published yesterday,
    and tomorrow's forecasts (hence the optimizations) need every hour of it. The live feed then re-delivers
    today's hours as they pass."""
    last = today or date.today()
    return last - timedelta(days=days - 1), last


@dataclass(frozen=True)
class SimulatedHistory:
    """What the landing folder and Kafka have received: market files for `history_start`..`last`."""

    history_start: date
    last: date


def simulate_demo_data(
    settings: Settings, *, database_url: str, bootstrap_servers: str, days: int, console: Console
) -> SimulatedHistory:
    """Seed the reference data, drop the window's market files in the landing folder and produce the
    trading history to Kafka.

    The simulation is anchored at the first run's first day (kept in `<home>/run/demo_simulated.json`) and
    continued from there on later runs, so a second `make demo` adds only the days since the last one, with
    prices that join up, instead of rewriting history that is already in gold.
    """
    from infra.services import kafka_security_config
    from ingestion.reference import seed_reference_data
    from ingestion.simulator.live import produce_simulated_trading, write_market_window

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    first, last = demo_window(days)
    marker = _history_marker(settings)
    previous = json.loads(marker.read_text()) if marker.exists() else {}
    history_start = demo_history_start(settings, days)
    done_until = date.fromisoformat(previous["last"]) if "last" in previous else history_start - timedelta(days=1)
    landing = settings.resolved_landing_dir
    if done_until >= last:
        console.print(f"reusing the simulated market data of {history_start}..{done_until}")
    else:
        # Continue the deterministic simulation from its anchor; only days not written before are dropped.
        start = max(first, done_until + timedelta(days=1))
        files = write_market_window(
            history_start, last, landing, skip_before=start, nodes_per_zone=NODES_PER_ZONE, seed=SEED
        )
        console.print(f"simulated {start}..{last}: {files} market files in {landing}")
    if not previous.get("trading_produced"):
        counts = produce_simulated_trading(
            bootstrap_servers,
            TRADING_EVENTS_PER_DAY * days,
            HISTORY_TICKS,
            SEED,
            False,
            kafka_security_config(settings),
            start=datetime.combine(first, datetime.min.time(), tzinfo=UTC),
        )
        console.print(f"produced {sum(counts.values())} trading change events and ticks to Kafka")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps({"history_start": str(history_start), "last": str(max(last, done_until)), "trading_produced": True})
    )
    return SimulatedHistory(history_start, max(last, done_until))


def _history_marker(settings: Settings) -> Path:
    return settings.home_dir / "run" / "demo_simulated.json"


def demo_history_start(settings: Settings, days: int) -> date:
    """The first simulated day of this home: the first demo's window start, kept across runs."""
    marker = _history_marker(settings)
    if marker.exists():
        return date.fromisoformat(json.loads(marker.read_text())["history_start"])
    return demo_window(days)[0]


def demo_api_key(settings: Settings, database_url: str) -> str:
    """An analyst API key of the `acme` organization for the printed examples: the one kept in
    `<home>/run/demo_api_key` while it is still valid, else a new one (the key is shown once by design,
    so the demo keeps its own copy, readable only by the user)."""
    from serving_api.cli import create_api_key
    from serving_api.security import api_key_prefix_of, token_digest

    path = settings.home_dir / "run" / "demo_api_key"
    if path.exists():
        key = path.read_text().strip()
        prefix = api_key_prefix_of(key)
        with db.connect(database_url) as conn:
            valid = (
                prefix is not None
                and conn.execute(
                    "SELECT 1 FROM ops.api_keys WHERE prefix = %s AND key_hash = %s AND revoked_at IS NULL",
                    (prefix, token_digest(key)),
                ).fetchone()
            )
        if valid:
            return key
    key = create_api_key(database_url, "acme", "optibid demo", "analyst")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


# --- freshness -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """One look at the platform: which layers hold the days they should, and what Dagster is doing."""

    files_waiting: int
    silver: bool
    gold_prices: bool
    gold_kpis: bool
    forecasts: bool
    optimization: bool
    runs_in_progress: int
    runs_queued: int

    @property
    def fresh(self) -> bool:
        return (
            self.files_waiting == 0
            and self.silver
            and self.gold_prices
            and self.gold_kpis
            and self.forecasts
            and self.optimization
            and self.runs_in_progress == 0
            and self.runs_queued == 0
        )

    def describe(self) -> str:
        def mark(ok: bool) -> str:
            return "[green]✓[/]" if ok else "[yellow]…[/]"

        return (
            f"landing {self.files_waiting} waiting · silver {mark(self.silver)} · gold prices "
            f"{mark(self.gold_prices)} · KPIs {mark(self.gold_kpis)} · forecasts {mark(self.forecasts)} · "
            f"optimization {mark(self.optimization)} · runs {self.runs_in_progress} running, "
            f"{self.runs_queued} queued"
        )


def _has_market_date(conn, table: str, day: date) -> bool:
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return False
    return conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE market_date = %s)", (day,)).fetchone()[0]


def look(settings: Settings, database_url: str, instance, last_market_date: date, delivery_day: date) -> Freshness:
    """Where the platform stands: the warehouse for `last_market_date`, Dagster for `delivery_day`."""
    import dagster as dg

    landing = settings.resolved_landing_dir
    waiting = sum(1 for p in landing.iterdir() if p.is_file() and not p.name.startswith(".")) if landing.exists() else 0
    with db.connect(database_url) as conn:
        silver = _has_market_date(conn, "silver.market__prices", last_market_date)
        prices = _has_market_date(conn, "gold.fct_prices_hourly", last_market_date)
        kpis = _has_market_date(conn, "gold.kpi_values", last_market_date)
    partition = delivery_day.isoformat()
    done: dict[str, bool] = {}
    for layer, key in DAY_AHEAD_ASSETS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(list(key)), asset_partitions=[partition]), limit=1
        ).records
        done[layer] = done.get(layer, True) and bool(records)
    running = instance.get_runs_count(
        dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    return Freshness(waiting, silver, prices, kpis, done["forecasts"], done["optimization"], running, queued)


def end_orphaned_runs(instance) -> int:
    """Mark runs that a previous demo left "in progress" as failed; how many.

    Called before the daemon starts, when no process of this home can be executing a run: a run whose
    process died with the last demo would otherwise stay STARTED for ever and hold a run-queue slot.
    """
    import dagster as dg

    orphans = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    for run in orphans:
        instance.report_run_failed(run, message="the demo that ran it was stopped")
    return len(orphans)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. `kill`, a CI timeout) stops the demo the same clean way as Ctrl-C."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    settings: Settings,
    env: dict[str, str],
    *,
    days: int,
    until_fresh: bool,
    timeout: float,
    console: Console,
    services_started_at: float,
) -> int:
    """Start the platform, feed it, report freshness; keep it alive until Ctrl-C (or until fresh with
    `until_fresh`). The exit code: 0, or 1 when `until_fresh` timed out or a process kept dying."""
    import dagster as dg

    from app.platform import PlatformError, PlatformProcesses, default_log_dir
    from infra.services import kafka_security_config
    from ingestion.cdc.topics import default_topics
    from ingestion.simulator.live import LiveLoad, LiveSimulator
    from ingestion.simulator.trading import ensure_topics

    database_url = env["OPTIBID_DATABASE_URL"]
    security = kafka_security_config(settings)
    if "partition_start" not in settings.model_fields_set:
        # Partitions start with the simulated history: from the 2024 default, the automation would first
        # fill hundreds of empty days.
        env = {**env, "OPTIBID_PARTITION_START": demo_history_start(settings, days).isoformat()}
    if "sensor_interval_seconds" not in settings.model_fields_set:
        # Each layer starts at the automation sensor's next tick after its parents: a demo someone watches
        # looks twice as often as the default (a tick costs the daemon 3-5 s of CPU).
        env = {**env, "OPTIBID_SENSOR_INTERVAL_SECONDS": str(DEMO_SENSOR_INTERVAL_SECONDS)}
    instance = dg.DagsterInstance.get()
    orphans = end_orphaned_runs(instance)
    if orphans:
        console.print(f"marked {orphans} runs left in progress by a previous demo as failed")
    platform = PlatformProcesses(
        env={**os.environ, **env},
        dagster_home=Path(env["DAGSTER_HOME"]),
        log_dir=default_log_dir(settings.home_dir),
        dagster_host=settings.dagster_host,
        dagster_port=settings.dagster_port,
        api_host=settings.api_host,
        api_port=settings.api_port,
        **tool_options(settings),
    )
    simulator = LiveSimulator(
        env["KAFKA_BOOTSTRAP_SERVERS"],
        security,
        settings.resolved_landing_dir,
        history_start=date.today(),  # replaced below once the history's anchor is known
        load=LiveLoad(
            ticks_per_second_per_zone=settings.demo_ticks_per_second,
            trading_events_per_second=settings.demo_trading_events_per_second,
            file_interval_seconds=settings.demo_file_interval_seconds,
            nodes_per_zone=NODES_PER_ZONE,
            seed=SEED,
        ),
    )
    code = 0
    try:
        with sigterm_as_interrupt():
            console.print(f"starting Dagster (webserver + daemon) and the API; logs in {platform.log_dir}")
            try:
                # The code server loads the definitions while the simulator writes the history.
                platform.start_code_server()
                history = simulate_demo_data(
                    settings,
                    database_url=database_url,
                    bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                    days=days,
                    console=console,
                )
                # The follow-mode consumer reads the topics that exist when it starts; the embedded broker
                # keeps topics in memory, so after a broker restart they are created before it starts.
                ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], default_topics(), security=security)
                platform.start()
                simulator.history_start = history.history_start
                platform.wait_until_serving()
            except PlatformError as exc:
                console.print(f"[bold red]error:[/] {exc}")
                return 2
            key = demo_api_key(settings, database_url)
            delivery_day = datetime.now(ZoneInfo(settings.market_timezone)).date() + timedelta(days=1)
            fresh_after = _wait_until_fresh(
                settings,
                database_url,
                instance,
                platform,
                history.last,
                delivery_day,
                timeout,
                console,
                services_started_at,
            )
            # The dbt docs' catalog describes the gold tables only once they exist: generate them again now.
            refresh_dbt_docs(platform.portal_url)
            _print_urls(platform, key, history.last, console)
            if fresh_after is None:
                console.print(
                    f"[bold red]not fresh after {timeout:.0f} s[/]: see the runs in {platform.dagster_url}/runs"
                )
                code = 1
            if until_fresh:
                return code
            # The live feed starts after the first fresh moment: on two cores, the catch-up of the history
            # goes first. Each file drop starts landing, silver and gold runs, and trading changes rebuild
            # trading silver and gold, which would otherwise keep "runs in progress" from ever reaching 0.
            simulator.start_stream()
            simulator.start_files()
            console.print(
                f"live: {settings.demo_ticks_per_second:g} ticks/s per zone, "
                f"{settings.demo_trading_events_per_second:g} trading events/s, a market file for today every "
                f"{settings.demo_file_interval_seconds:g} s.  Ctrl-C stops everything."
            )
            code = _keep_alive(platform, simulator, console)
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        # A second Ctrl-C (or a SIGINT sent to the whole process group) must not cut the stop short: it would
        # leave the children running, holding the ports the next demo needs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped = platform.stop()
        simulator.stop()
        if stopped:
            console.print("stopped: " + ", ".join([*stopped, "simulator"]))
    return code


def _wait_until_fresh(
    settings: Settings,
    database_url: str,
    instance,
    platform,
    last_market_date: date,
    delivery_day: date,
    timeout: float,
    console: Console,
    services_started_at: float,
) -> float | None:
    """Poll until fresh; seconds since the services started, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    shown: Freshness | None = None
    with console.status("waiting for the platform to catch up") as status:
        while True:
            state = look(settings, database_url, instance, last_market_date, delivery_day)
            elapsed = time.monotonic() - services_started_at
            if state.fresh:
                console.print(
                    f"[bold green]fresh[/] after {elapsed:.0f} s: {last_market_date} is in gold, the forecasts and "
                    f"optimizations for {delivery_day} are in, no run is in flight"
                )
                return elapsed
            if time.monotonic() > deadline:
                console.print(state.describe())
                return None
            _revive(platform, console)
            line = f"[{elapsed:4.0f} s] {state.describe()}"
            status.update(line)
            # Without a terminal (CI, a log file) the spinner shows nothing: print each change instead.
            if not console.is_terminal and state != shown:
                console.print(line)
                shown = state
            time.sleep(5)


def _keep_alive(platform, simulator, console: Console) -> int:
    while True:
        if not _revive(platform, console):
            return 1
        if simulator.counts.errors:
            console.print(f"[yellow]simulator:[/] {simulator.counts.errors.pop()}")
        time.sleep(2)


def _revive(platform, console: Console) -> bool:
    """Restart processes that died; False when one has died too often to keep trying."""
    for name in platform.dead():
        proc = platform.processes[name]
        if proc.restarts >= MAX_RESTARTS:
            console.print(f"[bold red]{name} keeps exiting[/] (log {proc.log_path}):\n{proc.tail()}")
            return False
        console.print(f"[yellow]{name} exited; restarting it[/] (log {proc.log_path})")
        platform.restart(name)
    return True


def tool_options(settings: Settings) -> dict[str, object]:
    """The `PlatformProcesses` fields of the landing page and the MLflow UI, from the settings: the MLflow UI
    serves the platform's own tracking store, unless MLFLOW_TRACKING_URI names a tracking server (which has
    its UI already)."""
    remote = (settings.mlflow_tracking_uri or "").startswith(("http://", "https://"))
    return {
        "tools": True,
        "portal_host": settings.portal_host,
        "portal_port": settings.portal_port,
        "mlflow_ui_host": settings.mlflow_ui_host,
        "mlflow_ui_port": settings.mlflow_ui_port,
        "mlflow_store_uri": None if remote else settings.resolved_mlflow_uri,
    }


def refresh_dbt_docs(portal_url: str) -> None:
    """Ask the landing page to regenerate the dbt docs (in the background; the page shows progress)."""
    from contextlib import suppress

    import httpx

    # Unanswered, the page offers the docs as they were; its log says why.
    with suppress(httpx.HTTPError):
        httpx.post(f"{portal_url}/dbt-docs/refresh", timeout=10)


def print_tool_urls(platform, console: Console) -> None:
    """The landing page first (it links everything), then each UI."""
    console.print(
        f"[bold green]Start here[/]  {platform.portal_url}  (every UI and report, freshness, alerts)\n"
        + (f"[bold green]MLflow UI[/]   {platform.mlflow_ui_url}\n" if platform.serves_mlflow_ui else "")
        + f"[bold green]Reports[/]     {platform.portal_url}/reports/gx_docs/index.html (Data Docs), "
        f"/reports/dbt_docs/index.html (dbt docs), /gold, /browse/drift, /browse/forecasts, /browse/optimization"
    )


def _print_urls(platform, key: str, last_market_date: date, console: Console) -> None:
    api, ws = platform.api_url, platform.api_url.replace("http://", "ws://", 1)
    day, next_day = last_market_date.isoformat(), (last_market_date + timedelta(days=1)).isoformat()
    print_tool_urls(platform, console)
    console.print(
        f"[bold green]Dagster UI[/]  {platform.dagster_url}  (runs: /runs, automation: /automation)\n"
        f"[bold green]API docs[/]    {api}/docs  (ReDoc: {api}/redoc)\n"
        f"[bold green]WebSocket[/]   {ws}/api/v1/ws/kpis/price_avg?zone=PJM&grain=minute&api_key={key}\n"
        f"[bold green]try[/]         curl -H 'X-API-Key: {key}' "
        f"'{api}/api/v1/prices?zone=PJM&market=DA&from={day}T00:00:00Z&to={next_day}T00:00:00Z'"
    )
