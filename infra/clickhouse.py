"""ClickHouse for the BI exports: a local server for development and tests, and the embedded default.

What belongs here: starting `clickhouse-server` (Debian's 18.16 package, or the single `clickhouse` binary of
current releases) with a configuration generated under a data directory: it listens on 127.0.0.1 only, on a
free native (TCP) port, with the HTTP and inter-server ports disabled, and keeps data, logs and temporary
files under that directory. `start_clickhouse` returns a handle whose `url` is a `clickhouse://` URL for
clickhouse-driver; `stop()` ends the process group it started. `clickhouse_url(settings)` is what the rest
of the platform calls: `CLICKHOUSE_URL` when set, otherwise an embedded server under `<home>/clickhouse`
that outlives the caller (recorded in `<home>/run/clickhouse.json`) until `stop_embedded_clickhouse`.

What does not: the exports and analytics queries (`ingestion/bi/`), and process bookkeeping shared with the
broker (`infra/processes.py`).

Privileges: the server runs as the calling user. As root this works (18.16 and current releases accept a
root process when the data directory is owned by the same user, which it is since it is created here), so
no privilege drop is needed; as an ordinary user it works the same because every path is under the data dir.
Without a binary, `ClickHouseNotInstalledError` says which apt/official packages provide one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from infra.processes import RecordedProcess, free_port, pid_alive
from infra.settings import Settings

INSTALL_HINT = (
    "ClickHouse is not installed: `apt-get install -y clickhouse-server clickhouse-client` (Debian 12 ships "
    "18.16) or install the official `clickhouse` binary, or set CLICKHOUSE_URL to an existing server."
)


class ClickHouseNotInstalledError(RuntimeError):
    """No clickhouse-server binary was found on PATH."""


class ClickHouseStartError(RuntimeError):
    """The server process exited or did not answer in time."""


def clickhouse_server_command() -> list[str] | None:
    """The command that runs a ClickHouse server, or None when ClickHouse is not installed."""
    legacy = shutil.which("clickhouse-server")
    if legacy:
        return [legacy]
    single = shutil.which("clickhouse")
    if single:
        return [single, "server"]
    return None


def server_config_xml(data_dir: Path, tcp_port: int) -> str:
    """The server config: loopback only, native port only, every path under `data_dir`.

    The root element is `<yandex>`, which 18.16 requires and current releases still accept.
    """
    d = escape(str(data_dir))
    return f"""<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{d}/log/clickhouse-server.log</log>
    <errorlog>{d}/log/clickhouse-server.err.log</errorlog>
    <size>50M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
"""


def users_config_xml(max_threads: int, max_memory_usage: int) -> str:
    """One passwordless `default` user reachable from loopback only (the server listens nowhere else)."""
    return f"""<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_threads>{max_threads}</max_threads>
      <max_memory_usage>{max_memory_usage}</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
        <read_rows>0</read_rows><execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


@dataclass
class ClickHouseServer:
    """A running local server started by `start_clickhouse`."""

    data_dir: Path
    tcp_port: int
    database: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log" / "clickhouse-server.err.log"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` seconds)."""
        if self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def __enter__(self) -> ClickHouseServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n_chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def start_clickhouse(
    data_dir: Path,
    *,
    tcp_port: int | None = None,
    database: str = "optibid",
    max_threads: int = 2,
    max_memory_usage: int = 4_000_000_000,
    startup_timeout: float = 60.0,
) -> ClickHouseServer:
    """Start a server under `data_dir` and wait until it answers `SELECT 1`; creates `database`.

    Raises `ClickHouseNotInstalledError` when no binary is on PATH and `ClickHouseStartError` (with the
    tail of the server's error log) when it exits or does not answer within `startup_timeout` seconds.
    """
    from clickhouse_driver import Client

    command = clickhouse_server_command()
    if command is None:
        raise ClickHouseNotInstalledError(INSTALL_HINT)
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database name must be alphanumeric/underscore, got {database!r}")
    data_dir = Path(data_dir).resolve()
    for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    port = tcp_port or free_port()
    config = data_dir / "config.xml"
    config.write_text(server_config_xml(data_dir, port))
    (data_dir / "users.xml").write_text(users_config_xml(max_threads, max_memory_usage))
    stdout = open(data_dir / "log" / "stdout.log", "ab")  # noqa: SIM115 - owned by the child process
    try:
        process = subprocess.Popen(
            [*command, f"--config-file={config}"],
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() must not signal the caller
        )
    finally:
        stdout.close()
    server = ClickHouseServer(data_dir=data_dir, tcp_port=port, database=database, process=process)
    deadline = time.monotonic() + startup_timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClickHouseStartError(
                f"clickhouse-server exited with {process.returncode}; log tail:\n{_tail(server.log_path)}"
                f"\n{_tail(data_dir / 'log' / 'stdout.log')}"
            )
        try:
            # a bare socket probe first: the driver logs every refused connection as an error
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            client = Client(host="127.0.0.1", port=port, user="default", connect_timeout=2)
            client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.disconnect()
            return server
        except Exception as exc:
            last_error = exc
            time.sleep(0.3)
    server.stop()
    raise ClickHouseStartError(
        f"clickhouse-server did not answer on 127.0.0.1:{port} within {startup_timeout}s "
        f"({last_error}); log tail:\n{_tail(server.log_path)}"
    )


# --- embedded default (CLICKHOUSE_URL unset) ------------------------------------------------------


def _record(settings: Settings) -> RecordedProcess:
    return RecordedProcess(settings.home_dir / "run" / "clickhouse.json")


def clickhouse_url(settings: Settings) -> str:
    """`CLICKHOUSE_URL` when set, else the URL of the embedded server under `<home>/clickhouse`.

    The embedded server is started on first use and outlives the caller (like the embedded Postgres and
    broker); `stop_embedded_clickhouse` stops it. Raises `ClickHouseNotInstalledError` without a binary.
    """
    if settings.clickhouse_url:
        return settings.clickhouse_url
    record = _record(settings)
    running = record.running()
    if running is not None:
        return str(running["url"])
    server = start_clickhouse(settings.home_dir / "clickhouse")
    record.write(server.process.pid, server.tcp_port, url=server.url)
    return server.url


def stop_embedded_clickhouse(settings: Settings, timeout: float = 20.0) -> bool:
    """Stop the embedded server if this home started one; True when something was stopped."""
    return _record(settings).stop(timeout)


def embedded_clickhouse_status(settings: Settings) -> str:
    """One line on the embedded server of this home, for `optibid services status`."""
    if clickhouse_server_command() is None:
        return "not installed (BI export disabled until CLICKHOUSE_URL is set)"
    state = _record(settings).read()
    if state is None:
        return "embedded: stopped (starts on first export)"
    running = pid_alive(state["pid"])
    return f"embedded (127.0.0.1:{state['port']}): {'running' if running else 'stopped'}"
