"""The one shared SparkSession.

What belongs here: building the process's session, local by default or on a cluster (`SPARK_MASTER`, or Spark
Connect through `SPARK_REMOTE`), with settings sized for a laptop. What does not: Spark jobs
(`ingestion/silver/`), the Dagster resource that hands the session to assets (`assets/shared/resources.py`)
and the Spark Connect server process (`app/platform.py`).

Starting Spark costs ~15 s, so a process builds at most one session and every silver asset reuses it.
"""

from __future__ import annotations

import sys
import threading

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
            .getOrCreate()
        )
        if not remote:
            # Classic pyspark takes its workers' interpreter from the PYSPARK_PYTHON variable when the context
            # starts (not from `spark.pyspark.python`); it is set on the context so the process environment
            # stays as the settings read it.
            session.sparkContext.pythonExec = python
        return session
