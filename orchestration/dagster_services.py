"""Dagster as separate services, the way every OptiBid deployment runs it.

- `code_server`: `dagster code-server start`, a gRPC server that loads `orchestration.definitions` and
  launches the runs (each run a process of its own); restarting it reloads the code without touching the
  other two.
- `daemon`: `dagster-daemon run`, the sensors, the automation, the run queue and run monitoring.
- `webserver`: `dagster-webserver`, the UI and its GraphQL API.

The daemon and the webserver find the code server through a workspace file (`workspace_yaml`); all three
share one instance (`dagster.yaml`, `infra/dagster_instance.py`): runs, events, schedules and the run queue
in Postgres, so any of them can be restarted or replaced without losing history.

What belongs here: the commands and the workspace of that topology, one source for the local platform
(`app/platform.py`), `infra/deploy/docker-compose.yml` and `infra/deploy/k8s/optibid.yaml` (the deploy files
are checked against it by `tests/foundation/test_deploy_files.py`). What does not: starting, watching and
stopping processes (`app/platform.py`), the instance's storage and limits (`infra/dagster_instance.py`).
Nothing here imports Dagster: these are command lines and YAML.
"""

from __future__ import annotations

DEFINITIONS_MODULE = "orchestration.definitions"
CODE_LOCATION = "optibid"
# The ports of the deploy files (compose services, Kubernetes Services); the local platform picks free ones.
CODE_SERVER_PORT = 4000
WEBSERVER_PORT = 3000
# The code server's own gRPC worker shuts down after this long without a heartbeat from the server that spawned
# it; Dagster's 30 s default is missed on a saturated machine (load 27-30 on two cores), after which every run
# launch fails for good ("Tried to start a run on a server after telling it to shut down").
CODE_SERVER_HEARTBEAT_TTL_SECONDS = 300
SERVICES = ("code_server", "daemon", "webserver")


def code_server_argv(host: str, port: int) -> list[str]:
    """The code server: loads the definitions once and serves them (and launches runs) over gRPC."""
    return [
        "dagster",
        "code-server",
        "start",
        "-h",
        host,
        "-p",
        str(port),
        "-m",
        DEFINITIONS_MODULE,
        "--location-name",
        CODE_LOCATION,
        "--heartbeat-ttl",
        str(CODE_SERVER_HEARTBEAT_TTL_SECONDS),
    ]


def webserver_argv(workspace: str, host: str, port: int) -> list[str]:
    """The UI and GraphQL API, reaching the code server through `workspace`."""
    return ["dagster-webserver", "-h", host, "-p", str(port), "-w", workspace]


def daemon_argv(workspace: str) -> list[str]:
    """Sensors, automation, run queue and run monitoring, reaching the code server through `workspace`."""
    return ["dagster-daemon", "run", "-w", workspace]


def service_argv(
    name: str, *, workspace: str, code_server_host: str, code_server_port: int, webserver_host: str, webserver_port: int
) -> list[str]:
    """The command of one of `SERVICES`; the executable comes first (a console script of the environment)."""
    if name == "code_server":
        return code_server_argv(code_server_host, code_server_port)
    if name == "daemon":
        return daemon_argv(workspace)
    if name == "webserver":
        return webserver_argv(workspace, webserver_host, webserver_port)
    raise ValueError(f"unknown Dagster service {name!r}; one of {SERVICES}")


def workspace_yaml(code_server_host: str, code_server_port: int) -> str:
    """The workspace of the daemon and the webserver: the one code location, served by the code server."""
    return (
        "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {code_server_host}\n"
        f"      port: {code_server_port}\n"
        f"      location_name: {CODE_LOCATION}\n"
    )
