"""The one shared SparkSession.

What belongs here: building the process's session, local by default or on a cluster (`SPARK_MASTER`, or Spark
Connect through `SPARK_REMOTE`), with settings sized for a laptop, and the command and environment of a local
Spark Connect server. What does not: Spark jobs (`ingestion/silver/`), the Dagster resource that hands the
session to assets (`assets/shared/resources.py`) and the lifetime of the platform's server process
(`app/platform.py`).

Starting Spark costs ~15 s, so a process builds at most one session and every silver asset reuses it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from pyspark.sql import SparkSession

from infra.settings import get_settings

_lock = threading.Lock()


def spark_session(
    master: str = "local[*]", remote: str | None = None, app_name: str = "optibid", python: str | None = None
) -> SparkSession:
    """The process's SparkSession, created on first use with settings sized for a laptop.

    `remote` (default `SPARK_REMOTE`) is a Spark Connect server, which owns its driver and its Python workers.
    Otherwise `python` (default `PYSPARK_PYTHON`, else this interpreter) runs the session's Python workers
    (mapInArrow, foreachPartition): this interpreter's environment has pyarrow and psycopg, whichever `python3`
    is first on PATH may not.
    """
    settings = get_settings()
    # pyspark itself reads SPARK_REMOTE and refuses a master beside it.
    remote = remote or settings.spark_remote
    python = python or settings.pyspark_python or sys.executable
    with _lock:
        builder = SparkSession.builder.appName(app_name)
        if remote:
            # A Connect server owns its driver: only session (SQL) settings can be set from here.
            builder = builder.remote(remote)
        else:
            builder = (
                builder.master(master)
                .config("spark.ui.enabled", "false")
                .config("spark.driver.memory", "2g")
                .config("spark.pyspark.python", python)
                # The console progress bar overwrites log and benchmark lines; the UI is off anyway.
                .config("spark.ui.showConsoleProgress", "false")
            )
        session = (
            builder.config("spark.sql.session.timeZone", "UTC")
            # Few cores locally: 200 shuffle partitions would be 200 tiny tasks per stage.
            .config("spark.sql.shuffle.partitions", "8")
            # Bronze is read from delta-rs file lists: above this many paths Spark lists them with a Spark job
            # of one task per file (seconds for a follow-mode table's day of small files), below it on the
            # driver (a stat per file).
            .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "10000")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # On, every pyspark function call (thousands to plan one silver build) makes several more Py4J round
            # trips to record its Python call site for error messages: about a second per build.
            .config("spark.python.sql.dataFrameDebugging.enabled", "false")
            .getOrCreate()
        )
        if not remote:
            # Classic pyspark takes its workers' interpreter from the PYSPARK_PYTHON variable when the context
            # starts (not from `spark.pyspark.python`); it is set on the context so the process environment
            # stays as the settings read it.
            session.sparkContext.pythonExec = python
        return session


def connect_server_command(
    port: int, driver_memory: str = "2g", warehouse_dir: str | None = None, python: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment of a Spark Connect server on 127.0.0.1:`port` (`local[*]`), run in the
    foreground (`--wait`) so that it is a child process its starter can stop.

    A long-lived server keeps its JVM warm: a process that connects to it skips the ~15 s start of a session and
    the first query's planning and code generation on a cold JVM.
    """
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    argv = [
        str(spark_home / "sbin" / "start-connect-server.sh"),
        "--wait",
        "--master", "local[*]",
        "--driver-memory", driver_memory,
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--conf", "spark.ui.enabled=false",
    ]
    if warehouse_dir is not None:
        argv += ["--conf", f"spark.sql.warehouse.dir={warehouse_dir}"]
    # The server's Python workers run the silver code: an interpreter with this environment's packages.
    return argv, {"PYSPARK_PYTHON": python or sys.executable, "SPARK_HOME": str(spark_home)}
