"""Reading bronze Delta tables in Spark through the delta-rs file list (no JVM Delta connector here).

Belongs here: how silver jobs get a bronze snapshot (or a part of one) as a DataFrame, which files of a snapshot
can hold rows of a time window (the Delta log's per-file statistics), and the minimal schemas that stand in for
a bronze table nothing has been written to yet.

A local lake is read by Spark's own Parquet reader. An object-store lake (`s3://`) is read by the executors
themselves through Arrow's S3 filesystem: the pyspark wheel has no `hadoop-aws` (s3a) jars, and funnelling a
snapshot through the driver would cap a cluster at one machine. Either way the executors reach the data only
through the lake URI, never through a folder they would have to share with the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from infra.lake import Lake

CDC_ENVELOPE = (
    "op string, key string, source_ts_ms long, source_lsn long, source_tx_id long, source_table string, "
    "before_json string, after_json string, payload_raw string, _topic string, _partition int, _offset long, "
    "_ingested_at timestamp, _batch_id string"
)


def local_frame(spark: SparkSession, rows: Sequence[Sequence[object]], schema: str) -> DataFrame:
    """A small frame of `rows` (DDL `schema`) built in the JVM as literals.

    `createDataFrame` from Python rows would ship them as pickles that Python workers decode on every use: a
    worker round trip per job, seconds on a busy machine.
    """
    struct = StructType.fromDDL(schema)
    assert isinstance(struct, StructType)
    typed = [
        F.struct(*[F.lit(value).cast(f.dataType).alias(f.name) for value, f in zip(row, struct.fields, strict=True)])
        for row in rows
    ]
    if not typed:
        return spark.range(0).select(*[F.lit(None).cast(f.dataType).alias(f.name) for f in struct.fields])
    return spark.range(1).select(F.inline(F.array(*typed)))


def read_bronze(
    spark: SparkSession,
    files: Sequence[str],
    empty_schema: str,
    schema: StructType | None = None,
    lake: Lake | None = None,
) -> DataFrame:
    """The rows of `files` (Parquet files of one Delta snapshot); an empty frame of `empty_schema` if none.

    `schema` is the table's Delta schema: given it, Spark skips schema inference (a job per read), and files
    written before the table gained a column read it as NULL. `lake` is where the files live: an object-store
    lake is read by the executors through Arrow (and then needs `schema`).
    """
    if not files:
        return local_frame(spark, [], empty_schema)
    if lake is not None and not lake.is_local:
        if schema is None:
            raise ValueError("reading an object-store lake needs the table's schema (delta_schema)")
        return _read_through_arrow(spark, files, schema, lake)
    reader = spark.read.schema(schema) if schema is not None else spark.read.option("mergeSchema", "true")
    return reader.parquet(*files)


def delta_schema(table: DeltaTable) -> StructType:
    """The Spark schema of a Delta table's current version."""
    return from_arrow_schema(pa.schema(table.schema().to_arrow()))


def files_overlapping(table: DeltaTable, column: str, lo: datetime, hi: datetime) -> list[str]:
    """URIs of the files of `table` that can hold a row with `lo <= column < hi`, by the min/max statistics each
    add action of the Delta log carries; a file without them is kept (so is every file, if the log has none).

    A follow-mode table gains a file per commit: a window of a day or two then reads a handful of files instead
    of the table's whole history, and a window no file reaches needs no Spark job at all.
    """
    uris = table.file_uris()
    actions = pa.table(table.get_add_actions(flatten=True))
    low, high = f"min.{column}", f"max.{column}"
    if actions.num_rows != len(uris) or low not in actions.column_names or high not in actions.column_names:
        return uris
    # Both lists come from the same snapshot in the same order; checked, since pruning must never drop a file.
    if not all(uri.endswith(unquote(path)) for uri, path in zip(uris, actions["path"].to_pylist(), strict=True)):
        return uris
    try:
        mins = pc.cast(actions[low], pa.timestamp("us", tz="UTC"))
        maxs = pc.cast(actions[high], pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return uris
    # Delta statistics may keep timestamps to the millisecond, truncated: a file's true maximum can lie up to a
    # millisecond above the recorded one.
    floor = pa.scalar(lo - timedelta(milliseconds=1), pa.timestamp("us", tz="UTC"))
    ceiling = pa.scalar(hi, pa.timestamp("us", tz="UTC"))
    keep = pc.and_kleene(
        pc.or_kleene(pc.is_null(mins), pc.less(mins, ceiling)),
        pc.or_kleene(pc.is_null(maxs), pc.greater_equal(maxs, floor)),
    ).to_pylist()
    return [uri for uri, kept in zip(uris, keep, strict=True) if kept]


def daily_rows(table: DeltaTable, column: str, first: date, days: int) -> np.ndarray:
    """Estimated rows of `table` on each of the `days` UTC days from `first`, by `column`, from the Delta log.

    Each file's `num_records` is spread evenly over its [min, max] of `column`: exact for the uniform series
    market feeds are, and close enough to size a build's slices. A file without statistics counts its rows on
    every day of the range (a bound, not an estimate).
    """
    estimate = np.zeros(days)
    actions = pa.table(table.get_add_actions(flatten=True))
    low, high = f"min.{column}", f"max.{column}"
    if actions.num_rows == 0:
        return estimate
    counts = np.asarray(actions["num_records"].fill_null(0).to_numpy(zero_copy_only=False), dtype=float)
    if low not in actions.column_names or high not in actions.column_names:
        return estimate + counts.sum()
    day_us = 86_400 * 1_000_000
    mins = pc.cast(actions[low], pa.timestamp("us", tz="UTC")).cast(pa.int64())
    maxs = pc.cast(actions[high], pa.timestamp("us", tz="UTC")).cast(pa.int64())
    unknown = np.asarray(pc.or_kleene(pc.is_null(mins), pc.is_null(maxs)).to_numpy(zero_copy_only=False))
    estimate += counts[unknown].sum()
    lo = np.asarray(mins.fill_null(0).to_numpy(zero_copy_only=False), dtype=float)[~unknown]
    hi = np.asarray(maxs.fill_null(0).to_numpy(zero_copy_only=False), dtype=float)[~unknown] + 1
    density = counts[~unknown] / (hi - lo)
    edges = (first - date(1970, 1, 1)).days * day_us + np.arange(days + 1, dtype=float) * day_us
    # Rows of a file on a day: its density times the part of [min, max] within the day; files in blocks of 1,024,
    # so a follow-mode table's thousands of files over ten years of days take ~30 MB at a time.
    for block in range(0, len(lo), 1024):
        part = slice(block, block + 1024)
        inside = np.minimum(hi[part, None], edges[None, 1:]) - np.maximum(lo[part, None], edges[None, :-1])
        estimate += (np.clip(inside, 0, None) * density[part, None]).sum(axis=0)
    return estimate


def read_bronze_table(spark: SparkSession, lake: Lake, name: str, empty_schema: str) -> DataFrame:
    """The current snapshot of bronze table `name`; empty (with `empty_schema`) when the table is absent."""
    table = lake.table("bronze", name)
    if table is None:
        return local_frame(spark, [], empty_schema)
    return read_bronze(spark, table.file_uris(), empty_schema, delta_schema(table), lake)


def _read_through_arrow(spark: SparkSession, files: Sequence[str], schema: StructType, lake: Lake) -> DataFrame:
    """The files' rows, read on the executors: one task per group of files, each opening the object store."""
    # Spark's Arrow timestamps are UTC microseconds (the session time zone is UTC, infra/spark.py).
    target = to_arrow_schema(schema, timezone="UTC")
    uris = local_frame(spark, [(uri,) for uri in files], "uri string")
    tasks = max(1, min(len(files), _parallelism(spark)))
    return uris.repartition(tasks).mapInArrow(_arrow_file_reader(lake.arrow_s3_options(), target), schema)


def _parallelism(spark: SparkSession) -> int:
    try:
        return spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect sessions have no SparkContext
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 8)


def _arrow_file_reader(s3_options: dict[str, object], target: pa.Schema) -> Callable[[Iterator], Iterator]:
    """The mapInArrow function that reads the Parquet files named in its `uri` batches, shaped as `target`.

    Defined inside a factory so that Spark pickles it by value: executors need pyarrow, not this package.
    """

    def read_files(batches: Iterator) -> Iterator:
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        filesystem = pafs.S3FileSystem(**s3_options)
        for batch in batches:
            for uri in batch.column("uri").to_pylist():
                path = uri.split("://", 1)[1]
                for part in pq.ParquetFile(path, filesystem=filesystem).iter_batches(batch_size=65_536):
                    # Columns a file predates read as NULL, like Spark's reader with the table schema.
                    columns = [
                        part.column(field.name).cast(field.type)
                        if field.name in part.schema.names
                        else pa.nulls(part.num_rows, field.type)
                        for field in target
                    ]
                    yield pa.RecordBatch.from_arrays(columns, schema=target)

    return read_files
