"""Reading bronze Delta tables in Spark through the delta-rs file list (no JVM Delta connector here).

Belongs here: how silver jobs get a bronze snapshot (or a part of one) as a DataFrame, and the minimal schemas
that stand in for a bronze table nothing has been written to yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
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
    spark: SparkSession, files: Sequence[str], empty_schema: str, schema: StructType | None = None
) -> DataFrame:
    """The rows of `files` (Parquet files of one Delta snapshot); an empty frame of `empty_schema` if none.

    `schema` is the table's Delta schema: given it, Spark skips schema inference (a job per read), and files
    written before the table gained a column read it as NULL.
    """
    if not files:
        return local_frame(spark, [], empty_schema)
    reader = spark.read.schema(schema) if schema is not None else spark.read.option("mergeSchema", "true")
    return reader.parquet(*files)


def delta_schema(table: DeltaTable) -> StructType:
    """The Spark schema of a Delta table's current version."""
    return from_arrow_schema(pa.schema(table.schema().to_arrow()))


def read_bronze_table(spark: SparkSession, lake: Lake, name: str, empty_schema: str) -> DataFrame:
    """The current snapshot of bronze table `name`; empty (with `empty_schema`) when the table is absent."""
    table = lake.table("bronze", name)
    if table is None:
        return local_frame(spark, [], empty_schema)
    return read_bronze(spark, table.file_uris(), empty_schema, delta_schema(table))
