"""Bronze Delta tables written with their Kafka offsets in the same commit (exactly-once bookkeeping).

Each append carries one delta-rs app transaction per Kafka partition it covers:
`Transaction(app_id=f"{topic}-{partition}", version=<last offset in the batch>)`, plus
`f"{topic}-{partition}.epoch"` when the broker's offsets restarted. A table's transaction versions are
therefore the consumer position, readable with `DeltaTable.transaction_version`: rows and offsets can
never disagree. Dead letters and schema-change events live in their own tables with the same per-partition
transactions, so a replay after a crash filters what those tables already hold (see `filter_new`).
Several consumer processes may append to one table at once, each for its own partitions (see
`ingestion.cdc.leases`). delta-rs rebases an append over concurrent appends itself; a conflict it cannot
resolve (another process created the table or merged a new column into its schema) is retried here on a
fresh snapshot. A writer committing app ids that another process has already advanced to the same offset
(a stale owner of the partition) gets the `CommitFailedError`: at most one of them commits a batch.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError
from deltalake.transaction import AddAction

from infra.lake import Lake
from ingestion.cdc.topics import BRONZE_LAYER

_log = logging.getLogger(__name__)
COMMIT_RETRIES = 50  # delta-rs rebases an append over concurrent appends this often before giving up
COMMIT_ATTEMPTS = 5  # re-reads of the table after a conflict delta-rs does not resolve (schema, creation)


def offset_app_id(topic: str, partition: int) -> str:
    """The app-transaction id recording the last offset of `topic`/`partition` in a table."""
    return f"{topic}-{partition}"


def epoch_app_id(topic: str, partition: int) -> str:
    """The app-transaction id recording how many times the partition's offsets restarted."""
    return f"{topic}-{partition}.epoch"


class BronzeTables:
    """Cached handles on the bronze tables of one consumer (log replay happens once per table)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._tables: dict[str, DeltaTable | None] = {}

    def table(self, name: str) -> DeltaTable | None:
        if self._tables.get(name) is None:
            self._tables[name] = self.lake.table(BRONZE_LAYER, name)
        return self._tables[name]

    def refresh(self) -> None:
        """Forget cached snapshots (after another writer may have committed)."""
        self._tables.clear()

    def column_types(self, name: str) -> dict[str, str]:
        """Delta type name of each column (`long`, `double`, `string`, ...); empty when the table is new."""
        table = self.table(name)
        if table is None:
            return {}
        return {f.name: getattr(f.type, "type", "struct") for f in table.schema().fields}

    def last_offset(self, name: str, topic: str, partition: int) -> int | None:
        """Last offset of the partition committed to table `name`, None when it never was."""
        table = self.table(name)
        return None if table is None else table.transaction_version(offset_app_id(topic, partition))

    def epoch(self, name: str, topic: str, partition: int) -> int:
        table = self.table(name)
        version = None if table is None else table.transaction_version(epoch_app_id(topic, partition))
        return version or 0

    def append(
        self,
        name: str,
        data: pa.Table,
        *,
        topic_offsets: dict[tuple[str, int], int],
        epochs: dict[tuple[str, int], int] | None = None,
        merge_schema: bool = False,
        metadata: dict[str, object] | None = None,
    ) -> int:
        """Append `data` and the partitions' last offsets in one commit; the new table version.

        An empty `data` still commits, so offsets advance past batches that were all dead letters.
        """
        txns = [Transaction(offset_app_id(t, p), off) for (t, p), off in sorted(topic_offsets.items())]
        txns += [Transaction(epoch_app_id(t, p), e) for (t, p), e in sorted((epochs or {}).items()) if e]
        props = CommitProperties(app_transactions=txns, custom_metadata=metadata, max_commit_retries=COMMIT_RETRIES)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = self.table(name)
            batch = data if table is None else _with_missing_columns(data, pa.schema(table.schema().to_arrow()))
            target = table if table is not None else self.lake.table_uri(BRONZE_LAYER, name)
            try:
                write_deltalake(
                    target,
                    batch,
                    mode="append",
                    schema_mode="merge" if merge_schema or table is None else None,
                    storage_options=self.lake.storage_options or None,
                    commit_properties=props,
                )
                break
            except (CommitFailedError, SchemaMismatchError, DeltaError) as exc:
                # Another process committed first: it created the table, or changed its schema (delta-rs
                # rebases plain appends itself, up to COMMIT_RETRIES times). Re-read the table and append again,
                # unless the offsets show that someone else committed this very batch.
                self._tables.pop(name, None)
                fresh = self.table(name)
                stale_owner = fresh is not None and any(
                    (fresh.transaction_version(offset_app_id(t, p)) or -1) >= offset
                    for (t, p), offset in topic_offsets.items()
                )
                retriable = isinstance(exc, CommitFailedError | SchemaMismatchError) or table is None
                if attempt == COMMIT_ATTEMPTS or fresh is None or stale_owner or not retriable:
                    raise
                _log.info("bronze.%s: commit conflict (%s), appending again on version %d", name, exc, fresh.version())
        table = self.table(name)
        assert table is not None
        return table.version()


    def append_file(
        self,
        name: str,
        path: str,
        size: int,
        stats: str,
        *,
        topic_offsets: dict[tuple[str, int], int],
        epochs: dict[tuple[str, int], int] | None = None,
        metadata: dict[str, object] | None = None,
    ) -> int:
        """Commit a Parquet file already written into the table's directory (`path` relative to it, rows in the
        table's column types; columns it lacks read as null), with the partitions' last offsets, in one
        commit; the new table version. Conflicts are handled as in `append`."""
        txns = [Transaction(offset_app_id(t, p), off) for (t, p), off in sorted(topic_offsets.items())]
        txns += [Transaction(epoch_app_id(t, p), e) for (t, p), e in sorted((epochs or {}).items()) if e]
        props = CommitProperties(app_transactions=txns, custom_metadata=metadata, max_commit_retries=COMMIT_RETRIES)
        action = AddAction(path, size, {}, int(time.time() * 1000), True, stats)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = self.table(name)
            if table is None:
                raise LookupError(f"bronze.{name} does not exist: a data file can only be added to a table")
            try:
                # The table's own schema: the commit adds a file and changes no metadata.
                table.create_write_transaction([action], mode="append", schema=table.schema(), commit_properties=props)
                break
            except (CommitFailedError, DeltaError) as exc:
                self._tables.pop(name, None)
                fresh = self.table(name)
                stale_owner = fresh is not None and any(
                    (fresh.transaction_version(offset_app_id(t, p)) or -1) >= offset
                    for (t, p), offset in topic_offsets.items()
                )
                if attempt == COMMIT_ATTEMPTS or fresh is None or stale_owner or not isinstance(exc, CommitFailedError):
                    raise
                _log.info("bronze.%s: commit conflict (%s), committing again on version %d", name, exc, fresh.version())
        table.update_incremental()  # unlike write_deltalake, the transaction leaves the handle where it was
        return table.version()


def filter_new(data: pa.Table, covered: dict[tuple[str, int], int]) -> pa.Table:
    """Rows of `data` whose (topic, partition) offset is above what the target table already covers."""
    if data.num_rows == 0 or not covered:
        return data
    mask = None
    for (topic, partition), last in covered.items():
        same = pc.and_(pc.equal(data["_topic"], topic), pc.equal(data["_partition"], partition))
        old = pc.and_(same, pc.less_equal(data["_offset"], last))
        mask = old if mask is None else pc.or_(mask, old)
    return data.filter(pc.invert(mask))


def _with_missing_columns(data: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """`data` plus all-null columns for table columns this batch did not carry (e.g. only tombstones)."""
    for field in table_schema:
        if field.name not in data.column_names:
            data = data.append_column(field.name, pa.nulls(data.num_rows, field.type))
    return data
