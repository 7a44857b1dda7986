"""The one shared SparkSession.

Starting Spark costs ~15 s, so a process builds at most one session and every silver asset reuses it.
`SPARK_REMOTE` (Spark Connect) or `SPARK_MASTER` point it at a cluster; `local[*]` is the default.
"""

from __future__ import annotations

import os
import sys
import threading

from pyspark.sql import SparkSession

from infra.settings import get_settings

_lock = threading.Lock()


def spark_session(master: str = "local[*]", remote: str | None = None, app_name: str = "optibid") -> SparkSession:
    """The process's SparkSession, created on first use with settings sized for a laptop."""
    with _lock:
        # Python workers (mapInArrow, foreachPartition) must run this interpreter, whose venv has pyarrow and
        # psycopg, not whichever `python3` is first on PATH; pyspark takes that choice only from the
        # environment, at context start. An explicit PYSPARK_PYTHON (a cluster's own) is kept.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # pyspark itself reads SPARK_REMOTE and refuses a master beside it.
        remote = remote or get_settings().spark_remote
        builder = SparkSession.builder.appName(app_name)
        if remote:
            # A Connect server owns its driver: only session (SQL) settings can be set from here.
            builder = builder.remote(remote)
        else:
            builder = (
                builder.master(master)
                .config("spark.ui.enabled", "false")
                .config("spark.driver.memory", "2g")
            )
        return (
            builder.config("spark.sql.session.timeZone", "UTC")
            # Few cores locally: 200 shuffle partitions would be 200 tiny tasks per stage.
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
