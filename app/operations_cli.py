"""`optibid backup create|list|verify|restore` (and the archive commands): the operator's handles on
`infra.backup` and `ingestion.archive`. The runbook is docs/operations.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.backup import BackupError
from infra.settings import get_settings

backup_app = typer.Typer(
    help="Encrypted backups of the warehouse, the Dagster instance and the lake.", no_args_is_help=True
)
console = Console()


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _warehouse_url() -> str:
    from infra.services import ServiceError, warehouse_url

    try:
        return warehouse_url(get_settings())
    except ServiceError as exc:
        raise _fail(str(exc)) from None


@backup_app.command("create")
def backup_create() -> None:
    """Take a backup now, verify it and keep the newest OPTIBID_BACKUP_KEEP."""
    from infra.backup import create_backup, prune_backups
    from infra.lake import lake_from_settings

    settings = get_settings()
    try:
        backup = create_backup(settings, _warehouse_url(), lake_from_settings(settings))
        pruned = prune_backups(settings)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"backup {backup.backup_id}: {backup.size_bytes / 1e6:.1f} MB in {backup.manifest['seconds']:.1f} s, "
        f"verified, in {backup.path}" + (f"; deleted {len(pruned)} older" if pruned else "")
    )


@backup_app.command("list")
def backup_list() -> None:
    """The backups, newest first."""
    from infra.backup import list_backups

    settings = get_settings()
    now = datetime.now(UTC)
    table = Table("backup", "taken (UTC)", "age (h)", "size (MB)", "lake tables", "seconds")
    for backup in list_backups(settings):
        table.add_row(
            backup.backup_id,
            backup.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{(now - backup.created_at).total_seconds() / 3600:.1f}",
            f"{backup.size_bytes / 1e6:.1f}",
            str(len(backup.manifest["lake"]["versions"])),
            str(backup.manifest["seconds"]),
        )
    console.print(table)
    console.print(f"in {settings.resolved_backup_dir}")


@backup_app.command("verify")
def backup_verify(
    backup_id: Annotated[str, typer.Argument(help="Backup id from `optibid backup list`, or `latest`.")] = "latest",
) -> None:
    """Decrypt every part and check its checksums and the manifest's signature (reads the whole backup)."""
    from infra.backup import find_backup, verify_backup

    settings = get_settings()
    try:
        backup = find_backup(settings, backup_id)
        verify_backup(settings, backup.path)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    console.print(f"backup {backup.backup_id}: OK ({len(backup.manifest['parts'])} parts, checksums match)")


@backup_app.command("restore")
def backup_restore(
    backup_id: Annotated[str, typer.Argument(help="Backup id from `optibid backup list`, or `latest`.")] = "latest",
) -> None:
    """Restore into this (fresh) OPTIBID_HOME, its database and its lake; refuses to overwrite anything."""
    from infra.backup import restore_backup
    from infra.lake import lake_from_settings

    settings = get_settings()
    try:
        report = restore_backup(settings, backup_id, _warehouse_url(), lake_from_settings(settings))
    except BackupError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"restored backup {report.backup_id} in {report.seconds:.1f} s: {len(report.lake_versions)} lake tables"
        + (f", then applied {len(report.migrations_applied)} newer migrations" if report.migrations_applied else "")
        + ". Start the platform as usual (`optibid demo` or your deployment): CDC resumes from the restored offsets."
    )


archive_app = typer.Typer(
    help="The cold tier: archived days of warehouse tables, raw payloads of bronze CDC rows.", no_args_is_help=True
)


@archive_app.command("list")
def archive_list(
    table: Annotated[str | None, typer.Argument(help="e.g. silver.market__prices or bronze.cdc__bids")] = None,
) -> None:
    """Days currently in the cold tier: warehouse tables' days, archived dead letters, and bronze CDC tables' raw
    payloads by the UTC day they were ingested (their rows stay hot)."""
    from infra.lake import lake_from_settings
    from infra.retention import archived_days, archived_lake_days

    out = Table("table", "day", "rows", "archive")
    lake_only = table is not None and table.removeprefix("bronze.").startswith("cdc__")
    if not lake_only:
        from infra import db

        with db.connect(_warehouse_url()) as conn:
            for name, day, rows, uri in archived_days(conn, table):
                out.add_row(name, day.isoformat(), str(rows), uri)
    if table is None or lake_only:
        settings = get_settings()
        lake = lake_from_settings(settings)
        for name, day, rows, uri in archived_lake_days(lake, settings.resolved_archive_uri, table):
            out.add_row(name, day.isoformat(), str(rows), uri)
    console.print(out)


@archive_app.command("restore")
def archive_restore(
    table: Annotated[str, typer.Argument(help="e.g. silver.market__prices")],
    day: Annotated[str, typer.Argument(help="YYYY-MM-DD")],
) -> None:
    """Bring one archived day of a table back into hot storage (verified against its checksum)."""
    from datetime import date

    from infra.retention import RetentionError, restore_day

    try:
        rows = restore_day(_warehouse_url(), get_settings().resolved_archive_uri, table, date.fromisoformat(day))
    except (RetentionError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"{table} {day}: {rows} rows back in hot storage")


@archive_app.command("restore-payloads")
def archive_restore_payloads(table: Annotated[str, typer.Argument(help="e.g. cdc__bids or bronze.cdc__bids")]) -> None:
    """Write a bronze CDC table's archived raw payloads back into its hot rows."""
    from infra.lake import lake_from_settings
    from infra.retention import RetentionError, restore_payloads

    settings = get_settings()
    name = table.removeprefix("bronze.")
    try:
        rows = restore_payloads(lake_from_settings(settings), settings.resolved_archive_uri, name)
    except RetentionError as exc:
        raise _fail(str(exc)) from None
    console.print(f"bronze.{name}: {rows} raw payloads back in hot storage")


@archive_app.command("payload")
def archive_payload(
    table: Annotated[str, typer.Argument(help="e.g. cdc__bids or bronze.cdc__bids")],
    topic: Annotated[str, typer.Argument(help="the row's _topic")],
    partition: Annotated[int, typer.Argument(help="the row's _partition")],
    offset: Annotated[int, typer.Argument(help="the row's _offset")],
    epoch: Annotated[int, typer.Option(help="the row's _offset_epoch")] = 0,
) -> None:
    """Print the raw Kafka value of one bronze CDC row, from hot storage or the cold tier."""
    from infra.lake import lake_from_settings
    from infra.retention import raw_payloads

    settings = get_settings()
    key = (topic, partition, epoch, offset)
    lake = lake_from_settings(settings)
    found = raw_payloads(lake, settings.resolved_archive_uri, table.removeprefix("bronze."), [key])
    if key not in found:
        raise _fail(f"no row {topic}/{partition}@{offset} (epoch {epoch}) in {table}")
    typer.echo(found[key] if found[key] is not None else "null (no value: a tombstone)")


@archive_app.command("run")
def archive_run() -> None:
    """Archive and prune everything past its retention now (what the nightly ops/retention asset does)."""
    from infra.lake import lake_from_settings
    from infra.retention import RetentionError, apply_retention

    settings = get_settings()
    try:
        outcomes = apply_retention(
            _warehouse_url(), settings, datetime.now(UTC).date(), lake=lake_from_settings(settings)
        )
    except RetentionError as exc:
        raise _fail(str(exc)) from None
    for o in outcomes:
        console.print(f"{o.action} {o.table} {o.day}: {o.rows} rows")
    console.print(f"{len(outcomes)} days handled")
