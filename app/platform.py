"""The running platform's processes: Dagster (code server, webserver, daemon), the API, the follow-mode CDC
consumer, Spark Connect, the MLflow UI and the landing page (`app/portal.py`), started as child processes
with their own logs and stopped in order.

What belongs here: which processes make up a running platform, how each is started, watched, restarted and
stopped. Used by `optibid demo` (`app/demo.py`) and by tests and benchmarks that need the platform running
with their own DAGSTER_HOME and ports. What does not: the embedded services the platform talks to (Postgres,
the broker, ClickHouse: `infra/services.py`), and generic process helpers (`infra/processes.py`).

Dagster runs as the production processes rather than `dagster dev`: `dagster-webserver` and
`dagster-daemon run` are separate children, so the daemon (sensors, schedules, automation, run queue) is a
process of its own that the demo can watch and restart without taking the UI down, exactly as
`infra/deploy/` runs it (the commands are `orchestration/dagster_services.py`, shared with the deploy files). Both
talk to one shared `dagster code-server`, as `dagster dev` does: loading the definitions costs ~15 s of CPU,
and loading them once instead of twice matters on a 2-core machine.

Spark runs as one long-lived Spark Connect server (`start-connect-server.sh`, shipped in the pyspark wheel)
unless `SPARK_REMOTE` or `SPARK_MASTER` already point at a cluster: every silver run then opens a session on
it in under a second instead of starting its own JVM (~15 s, and as much CPU, per run on two cores).

Every child gets its own session (process group): Ctrl-C in the terminal reaches only the parent, which
then stops the children one by one (`stop`), and a child's own subprocesses (Dagster runs, code servers)
go with it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from infra.dbt import DBT_MANIFEST, manifest_is_stale, prepare_manifest
from infra.processes import free_port, port_open, signal_process_group
from infra.spark import connect_server_command
from orchestration.dagster_services import (
    code_server_argv,
    daemon_argv,
    webserver_argv,
    workspace_yaml,
)

# Stop order: first what starts new work (UI launches, daemon ticks), then the API and consumer, and the
# code server last because the other two talk to it.
STOP_ORDER = ("webserver", "daemon", "api", "portal", "mlflow_ui", "cdc_follow", "code_server", "spark_connect")
TOOL_PROCESSES = ("portal", "mlflow_ui")  # started with `tools=True` (or by `start_tools`)


class PlatformError(RuntimeError):
    """A platform process could not start or died; the message names its log."""


@dataclass
class PlatformProcess:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None
    restarts: int = 0
    env: Mapping[str, str] | None = None  # its own environment, else the platform's

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class PlatformProcesses:
    """Start the platform's processes on `__enter__`, stop them on `__exit__` (or `stop()`).

    `env` is the complete environment of the children (services exported, DAGSTER_HOME set); `log_dir`
    receives one log file per process.
    """

    env: Mapping[str, str]
    dagster_home: Path
    log_dir: Path
    dagster_host: str = "127.0.0.1"
    dagster_port: int = 3000
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api: bool = True
    # The landing page with the reports, and the MLflow UI on the platform's tracking store (`tools`): off
    # unless asked for (the demo and `optibid serve` do), so a test's platform takes no fixed ports.
    tools: bool = False
    portal_host: str = "127.0.0.1"
    portal_port: int = 8080
    mlflow_ui_host: str = "127.0.0.1"
    mlflow_ui_port: int = 5000
    # The tracking store the MLflow UI serves; None (a remote tracking server has its own UI) starts none.
    mlflow_store_uri: str | None = None
    cdc_follow: bool = True
    # Start a Spark Connect server for the runs (unless the environment names a Spark cluster already).
    spark_connect: bool = True
    spark_driver_memory: str = "2g"
    cwd: Path | None = None
    python: str = sys.executable
    stop_timeout: float = 30.0
    processes: dict[str, PlatformProcess] = field(default_factory=dict)
    _grpc_port: int = 0
    _spark_port: int = 0

    @property
    def dagster_url(self) -> str:
        return f"http://{_client_host(self.dagster_host)}:{self.dagster_port}"

    @property
    def api_url(self) -> str:
        return f"http://{_client_host(self.api_host)}:{self.api_port}"

    @property
    def portal_url(self) -> str:
        return f"http://{_client_host(self.portal_host)}:{self.portal_port}"

    @property
    def mlflow_ui_url(self) -> str:
        return f"http://{_client_host(self.mlflow_ui_host)}:{self.mlflow_ui_port}"

    @property
    def serves_mlflow_ui(self) -> bool:
        return self.tools and self.mlflow_store_uri is not None

    def __enter__(self) -> PlatformProcesses:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_code_server(self) -> None:
        """Check the listening ports are free and start the shared code server (it loads the definitions
        for ~15 s, which the caller can overlap with other work before `start`)."""
        listeners = [("Dagster UI", self.dagster_host, self.dagster_port)]
        if self.api:
            listeners.append(("API", self.api_host, self.api_port))
        listeners += self._tool_listeners()
        for what, host, port in listeners:
            if not _port_free(host, port):
                raise PlatformError(f"{host}:{port} ({what}) is already in use: is another OptiBid platform running?")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The gold assets are built from the dbt manifest: parse once here if a model is newer than it.
        if manifest_is_stale(DBT_MANIFEST):
            prepare_manifest()
        self._start_spark_connect()
        self._grpc_port = free_port()
        (self.dagster_home / "workspace.yaml").write_text(
            "# Written by `optibid demo`: the webserver and the daemon share one code server.\n"
            + workspace_yaml("127.0.0.1", self._grpc_port)
        )
        self._add_dagster("code_server", code_server_argv("127.0.0.1", self._grpc_port))
        self._start("code_server")

    @property
    def spark_remote(self) -> str | None:
        """The Spark Connect URL the runs use, when this platform started the server."""
        return f"sc://127.0.0.1:{self._spark_port}" if self._spark_port else None

    def _start_spark_connect(self) -> None:
        if not self.spark_connect or self.env.get("SPARK_REMOTE") or self.env.get("SPARK_MASTER"):
            return
        self._spark_port = free_port()
        argv, env = connect_server_command(
            self._spark_port,
            self.spark_driver_memory,
            str(self.log_dir.parent / "spark-warehouse"),
            self.env.get("PYSPARK_PYTHON", self.python),
        )
        self._add("spark_connect", argv)
        self.processes["spark_connect"].env = {**self.env, **env}
        self._start("spark_connect")
        # Every other child (the code server, hence every run) opens its sessions on this server.
        self.env = {**self.env, "SPARK_REMOTE": self.spark_remote}

    def start(self) -> None:
        """Start every process (the code server first, unless `start_code_server` already did); returns
        once they are launched: `wait_until_serving` waits for the UI and the API to answer."""
        if "code_server" not in self.processes:
            self.start_code_server()
        workspace = self.dagster_home / "workspace.yaml"
        self._wait_for(lambda: not _port_free("127.0.0.1", self._grpc_port), "code_server", timeout=180)
        self._add_dagster("webserver", webserver_argv(str(workspace), self.dagster_host, self.dagster_port))
        self._add_dagster("daemon", daemon_argv(str(workspace)))
        if self.api:
            self._add(
                "api",
                [
                    self.python,
                    "-m",
                    "uvicorn",
                    "serving_api.app:app",
                    "--host",
                    self.api_host,
                    "--port",
                    str(self.api_port),
                ],
            )
        if self.cdc_follow:
            self._add("cdc_follow", [self.python, "-m", "ingestion.cdc.cli", "--follow"])
        if self.tools:
            self._add_tools()
        for name, proc in self.processes.items():
            if proc.popen is None:
                self._start(name)

    def _tool_listeners(self) -> list[tuple[str, str, int]]:
        if not self.tools:
            return []
        listeners = [("landing page", self.portal_host, self.portal_port)]
        if self.serves_mlflow_ui:
            listeners.append(("MLflow UI", self.mlflow_ui_host, self.mlflow_ui_port))
        return listeners

    def _add_tools(self) -> None:
        self._add(
            "portal",
            [
                self.python,
                "-m",
                "uvicorn",
                "--factory",
                "app.portal:create_portal_from_environment",
                "--host",
                self.portal_host,
                "--port",
                str(self.portal_port),
            ],
        )
        if self.serves_mlflow_ui:
            assert self.mlflow_store_uri is not None
            self._add(
                "mlflow_ui",
                mlflow_ui_argv(self.python, self.mlflow_store_uri, self.mlflow_ui_host, self.mlflow_ui_port),
            )
            # Without this the server starts seven job-queue consumers for GenAI features the platform does
            # not use: processes and memory a laptop running the platform would rather keep.
            self.processes["mlflow_ui"].env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def start_tools(self) -> None:
        """Start only the landing page and the MLflow UI (`optibid serve`, beside a platform running
        elsewhere): the ports are checked first, like `start` does for the whole platform."""
        for what, host, port in self._tool_listeners():
            if not _port_free(host, port):
                raise PlatformError(f"{host}:{port} ({what}) is already in use")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._add_tools()
        for name in ("portal", "mlflow_ui"):
            if name in self.processes and self.processes[name].popen is None:
                self._start(name)

    def wait_until_tools_serve(self, timeout: float = 180.0) -> None:
        """Block until the landing page (and the MLflow UI, when started) answer."""
        if "portal" in self.processes:
            self._wait_for(lambda: _answers(f"{self.portal_url}/status.json"), "portal", timeout)
        if "mlflow_ui" in self.processes:
            self._wait_for(lambda: _answers(f"{self.mlflow_ui_url}/health"), "mlflow_ui", timeout)

    def wait_until_serving(self, timeout: float = 180.0) -> None:
        """Block until the Dagster UI answers (and the API, when started); `PlatformError` if one dies."""
        self._wait_for(lambda: _answers(f"{self.dagster_url}/server_info"), "webserver", timeout)
        if self._spark_port:
            self._wait_for(lambda: not _port_free("127.0.0.1", self._spark_port), "spark_connect", timeout)
        if self.api:
            self._wait_for(lambda: _answers(f"{self.api_url}/healthz"), "api", timeout)
        self.wait_until_tools_serve(timeout)

    def dead(self) -> list[str]:
        """Names of the processes that have exited."""
        return [name for name, proc in self.processes.items() if proc.popen is not None and not proc.running]

    def restart(self, name: str) -> None:
        """Start a process that exited again (its log is appended to)."""
        proc = self.processes[name]
        if proc.running:
            return
        proc.restarts += 1
        self._start(name)

    def stop(self) -> list[str]:
        """Stop every running process in `STOP_ORDER`: SIGINT to its process group, then SIGKILL after
        `stop_timeout`; the names stopped."""
        stopped = []
        for name in STOP_ORDER:
            proc = self.processes.get(name)
            if proc is None or not proc.running:
                continue
            assert proc.popen is not None
            signal_process_group(proc.popen.pid, signal.SIGINT)
            try:
                proc.popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                signal_process_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
            # Leftover grandchildren (a run subprocess, a code server) share the group: end them too.
            signal_process_group(proc.popen.pid, signal.SIGKILL)
            stopped.append(name)
        return stopped

    def _script(self, name: str) -> str:
        """A console script of the environment `python` belongs to."""
        return str(Path(self.python).parent / name)

    def _add_dagster(self, name: str, argv: list[str]) -> None:
        """A Dagster service of `orchestration/dagster_services.py`, its console script from this environment."""
        self._add(name, [self._script(argv[0]), *argv[1:]])

    def _add(self, name: str, argv: list[str]) -> None:
        self.processes[name] = PlatformProcess(name, argv, self.log_dir / f"{name}.log")

    def _start(self, name: str) -> None:
        proc = self.processes[name]
        with open(proc.log_path, "ab") as log:
            proc.popen = subprocess.Popen(
                proc.argv,
                env=dict(self.env if proc.env is None else proc.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_for(self, ready, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self.processes[name]
        while not ready():
            if not proc.running:
                raise PlatformError(f"{name} exited (log {proc.log_path}):\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise PlatformError(f"{name} did not come up within {timeout:.0f} s (log {proc.log_path})")
            time.sleep(0.5)


def mlflow_ui_argv(python: str, store_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` on the platform's tracking store, its UI on host:port.

    One worker: the UI is for a handful of people, and each worker is a process of its own. Artifacts are
    read from where the runs logged them (the store's `artifacts` folder, see ml/forecasting/tracking.py),
    so the server does not proxy an artifact store of its own."""
    argv = [python, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--host", host]
    argv += ["--port", str(port), "--workers", "1", "--no-serve-artifacts"]
    if store_uri.startswith("sqlite:///"):
        artifacts = Path(store_uri.removeprefix("sqlite:///")).parent / "artifacts"
        argv += ["--default-artifact-root", artifacts.resolve().as_uri()]
    return argv


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _port_free(host: str, port: int) -> bool:
    return not port_open(_client_host(host), port, timeout=0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def default_log_dir(home: Path) -> Path:
    """Where `optibid demo` keeps the platform processes' logs."""
    return home / "logs"
