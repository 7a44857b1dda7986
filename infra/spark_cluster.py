"""A Spark standalone cluster and a Spark Connect server on this machine, as separate JVMs.

What belongs here: starting and stopping a standalone master, its workers and (optionally) a Spark Connect server
that runs its sessions on that master, all from the `bin/spark-class` and `sbin/start-connect-server.sh` the pyspark
wheel ships. Tests and benchmarks use it to run the silver build on a real cluster (`spark://…` masters,
`sc://…` remotes) without a separate Spark install. What does not: the session a process builds
(`infra/spark.py`) and the platform's own long-lived Connect server (`app/platform.py`).

Every process is started in its own session (process group), so `stop()` ends the JVM and anything it forked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.processes import free_port, port_open, stop_process_group


class SparkClusterError(RuntimeError):
    """A cluster process did not come up; the message names the process and its log."""


def spark_home() -> Path:
    """The Spark distribution inside the pyspark wheel (it ships `bin/` and `sbin/`)."""
    import pyspark

    return Path(pyspark.__file__).parent


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.popen, timeout)


@dataclass
class SparkCluster:
    """A running standalone master with its workers, and its Connect server once started."""

    master_url: str
    master_ui_port: int
    work_dir: Path
    python: str
    processes: list[_Process] = field(default_factory=list)
    connect_url: str | None = None

    def alive_workers(self) -> int:
        """Workers the master counts as ALIVE (from its JSON status page)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.master_ui_port}/json/", timeout=2) as response:
                status = json.load(response)
        except OSError:
            return 0
        return int(status.get("aliveworkers", 0))

    def start_connect_server(self, executor_memory: str = "512m", timeout: float = 180.0) -> str:
        """Start a Spark Connect server whose sessions run on this cluster; its `sc://` URL."""
        port = free_port()
        process = _launch(
            "spark-connect",
            [
                str(spark_home() / "sbin" / "start-connect-server.sh"),
                "--wait",  # in the foreground: the process group is ours to stop
                "--master",
                self.master_url,
                "--driver-memory",
                "1g",
                *_conf(
                    {
                        "spark.connect.grpc.binding.address": "127.0.0.1",
                        "spark.connect.grpc.binding.port": str(port),
                        "spark.driver.host": "127.0.0.1",
                        "spark.ui.enabled": "false",
                        "spark.executor.memory": executor_memory,
                        "spark.executor.cores": "1",
                        "spark.pyspark.python": self.python,
                        "spark.sql.warehouse.dir": str(self.work_dir / "connect-warehouse"),
                    }
                ),
            ],
            self.work_dir,
            # spark-daemon.sh sizes the server's JVM from SPARK_DAEMON_MEMORY, not --driver-memory.
            {"PYSPARK_PYTHON": self.python, "SPARK_DAEMON_MEMORY": "1g"},
        )
        self.processes.append(process)
        _wait(lambda: port_open("127.0.0.1", port), process, timeout)
        self.connect_url = f"sc://127.0.0.1:{port}"
        return self.connect_url

    def stop(self) -> None:
        """Stop the Connect server, the workers and the master (in that order); safe to call twice."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def start_standalone_cluster(
    work_dir: Path,
    workers: int = 2,
    cores: int = 1,
    memory: str = "512m",
    python: str | None = None,
    timeout: float = 120.0,
) -> SparkCluster:
    """A master and `workers` workers (each `cores` cores, `memory` for executors) on 127.0.0.1.

    `python` runs the executors' Python workers (default this interpreter). Returns once every worker is
    registered; on failure everything already started is stopped and the error names the failing log.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port, ui_port = free_port(), free_port()
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", ui_port, work_dir, python or sys.executable)
    try:
        master = _launch(
            "spark-master",
            [
                str(spark_home() / "bin" / "spark-class"),
                "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port),
            ],
            work_dir,
        )
        cluster.processes.append(master)
        _wait(lambda: port_open("127.0.0.1", port) and port_open("127.0.0.1", ui_port), master, timeout)
        for index in range(workers):
            worker_dir = work_dir / f"worker-{index}"
            worker_dir.mkdir(exist_ok=True)
            cluster.processes.append(
                _launch(
                    f"spark-worker-{index}",
                    [
                        str(spark_home() / "bin" / "spark-class"),
                        "org.apache.spark.deploy.worker.Worker",
                        cluster.master_url,
                        "--host", "127.0.0.1", "--port", str(free_port()), "--webui-port", str(free_port()),
                        "--cores", str(cores), "--memory", memory, "--work-dir", str(worker_dir),
                    ],
                    work_dir,
                )
            )
        _wait(lambda: cluster.alive_workers() >= workers, cluster.processes[-1], timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _conf(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--conf", f"{key}={value}")]


def _launch(name: str, command: list[str], work_dir: Path, extra_env: dict[str, str] | None = None) -> _Process:
    log = work_dir / f"{name}.log"
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        # The master and worker daemons only schedule; executors get their own memory.
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_LOG_DIR": str(work_dir),
        "SPARK_PID_DIR": str(work_dir),
        **(extra_env or {}),
    }
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=work_dir, env=env, start_new_session=True
        )
    return _Process(name, popen, log)


def _wait(ready, process: _Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.popen.poll() is not None:
            raise SparkClusterError(f"{process.name} exited with {process.popen.returncode}; see {process.log}")
        if time.monotonic() > deadline:
            raise SparkClusterError(f"{process.name} not ready after {timeout:.0f} s; see {process.log}")
        time.sleep(0.5)
