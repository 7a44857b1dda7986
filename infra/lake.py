"""Where the Delta Lake lives and how its tables are addressed.

The lake root is a local folder or an object-store URI (`s3://bucket/prefix`); tables are
`<root>/<layer>/<name>`. delta-rs does every write; Spark reads a table's snapshot through the file list
delta-rs gives (`snapshot_files`), because the JVM Delta connector cannot be installed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra.settings import Settings


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
