"""Where the Delta Lake lives and how its tables are addressed.

The lake root is a local folder or an object-store URI (`s3://bucket/prefix`); tables are
`<root>/<layer>/<name>`. delta-rs does every write; Spark reads a table's snapshot through the file list
delta-rs gives (`snapshot_files`), because the JVM Delta connector cannot be installed here.

On S3, delta-rs commits each log entry with a conditional `PUT` (`If-None-Match: *`): of two writers racing for
the same version one gets `412 Precondition Failed` and retries on the next version, so concurrent committers
need no locking provider (delta-rs 1.x no longer has the DynamoDB one). The store must honour conditional
writes: AWS S3 does, as do MinIO, R2 and moto's server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deltalake import ColumnProperties, DeltaTable, WriterProperties
from deltalake.exceptions import TableNotFoundError

from infra.settings import Settings

# An upload's row number counts up by one within each file it lands in. Delta-encoded it takes a few bytes per page
# instead of eight per row: 4.8 M benchmark rows land in 10.6 MB instead of 31 MB, for the same write CPU.
COUNTING_COLUMNS = ("_row_number",)


def writer_properties(compression: str, level: int | None = None) -> WriterProperties:
    """How delta-rs writes the lake's data files: `compression` (at `level`), and the counting lineage columns
    delta-encoded. Every writer of a table's files uses it, so a compaction or rewrite keeps their encoding."""
    counting = ColumnProperties(dictionary_enabled=False, encoding="DELTA_BINARY_PACKED")
    return WriterProperties(
        compression=compression,  # type: ignore[arg-type]
        compression_level=level,
        column_properties=dict.fromkeys(COUNTING_COLUMNS, counting),
    )


class LakeError(RuntimeError):
    """The lake location is unusable; the message names the setting to fix."""


@dataclass(frozen=True)
class Lake:
    """A lake root plus the storage options delta-rs needs to reach it."""

    root: str
    storage_options: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def table_uri(self, layer: str, name: str) -> str:
        """URI of table `name` in `layer` (bronze, silver, ...)."""
        return f"{self.root.rstrip('/')}/{layer}/{name}"

    def table(self, layer: str, name: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table, or None when nothing has been written to it yet."""
        try:
            return DeltaTable(self.table_uri(layer, name), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def snapshot_files(self, layer: str, name: str, version: int | None = None) -> list[str]:
        """Absolute URIs of the Parquet files of one table version (empty when the table is absent)."""
        table = self.table(layer, name, version)
        return table.file_uris() if table is not None else []

    def table_names(self, layer: str) -> list[str]:
        """Names of the Delta tables in `layer` (folders holding a `_delta_log`), sorted; empty when none."""
        import pyarrow.fs as pafs

        if self.is_local:
            folder = Path(self.root.removeprefix("file://")) / layer
            if not folder.is_dir():
                return []
            return sorted(p.name for p in folder.iterdir() if (p / "_delta_log").is_dir())
        if self.root.startswith(("s3://", "s3a://")):
            fs: pafs.FileSystem = pafs.S3FileSystem(**self.arrow_s3_options())  # type: ignore[arg-type]
            base = self.table_uri(layer, "").split("://", 1)[1].rstrip("/")
        else:
            fs, base = pafs.FileSystem.from_uri(self.table_uri(layer, "").rstrip("/"))
        found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        folders = [f.path for f in found if f.type == pafs.FileType.Directory]
        logs = fs.get_file_info([f"{folder}/_delta_log" for folder in folders])
        return sorted(
            folder.rsplit("/", 1)[-1]
            for folder, log in zip(folders, logs, strict=True)
            if log.type == pafs.FileType.Directory
        )

    def arrow_s3_options(self) -> dict[str, object]:
        """Keyword arguments of `pyarrow.fs.S3FileSystem` that reach this lake as delta-rs does.

        Built from the delta-rs storage options (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...; any case, with or
        without the `aws_` prefix); what they leave out, Arrow takes from the same AWS environment and profile
        chain as delta-rs.
        """
        if not self.root.startswith(("s3://", "s3a://")):
            raise LakeError(f"only s3:// object-store lakes can be read by Spark here, not {self.root}")
        options = {key.lower().removeprefix("aws_"): value for key, value in self.storage_options.items()}
        arrow: dict[str, object] = {}
        for ours, theirs in (
            ("access_key_id", "access_key"),
            ("secret_access_key", "secret_key"),
            ("session_token", "session_token"),
            ("token", "session_token"),
            ("region", "region"),
            ("default_region", "region"),
        ):
            if options.get(ours):
                arrow.setdefault(theirs, options[ours])
        endpoint = options.get("endpoint_url") or options.get("endpoint")
        if endpoint:
            scheme, _, address = endpoint.rpartition("://")
            arrow["endpoint_override"] = address.rstrip("/")
            arrow["scheme"] = scheme or "https"
        return arrow

    def ensure_writable(self) -> None:
        """Fail early with a clear message when a local lake root can't be created or written."""
        if not self.is_local:
            return
        path = Path(self.root.removeprefix("file://"))
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise LakeError(f"the lake folder {path} (OPTIBID_LAKE_URI) is not writable: {exc.strerror}") from exc


def lake_from_settings(settings: Settings) -> Lake:
    """The lake described by the settings."""
    return Lake(settings.resolved_lake_uri, dict(settings.lake_storage_options))
