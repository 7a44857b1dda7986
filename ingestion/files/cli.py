"""`optibid ingest files PATH...`: land local files through the same code path as uploads.

Mounted by `app/cli.py` under `optibid ingest`. Each file is received (size limit, content checks,
duplicate detection), processed (mapping, validation, landing, quarantine) and summarised in a table;
a held file prints its proposed mapping so it can be completed with `POST /uploads/{id}/mapping`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="Uploaded market files (CSV, TSV, Excel, JSON, Parquet) into bronze.",
    # The sub-app has no sub-commands: options may follow the paths (`optibid ingest files a.csv --tz X`).
    context_settings={"allow_interspersed_args": True},
)
console = Console()


def _defaults(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"--default takes field=value, not {pair!r}")
        out[key.strip()] = value.strip()
    return out


@app.callback(invoke_without_command=True)
def ingest_files(
    paths: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="Files to land.")
    ],
    org: Annotated[str, typer.Option(help="Organisation the files belong to.")] = "local",
    tz: Annotated[str, typer.Option(help="Time zone of timestamps written without an offset.")] = "UTC",
    default: Annotated[
        list[str], typer.Option("--default", "-d", help="File-wide value the files omit, e.g. zone=DE-LU.")
    ] = [],  # noqa: B006  (typer reads the default, it is never mutated)
) -> None:
    """Receive and process each file; print status, dataset, confidence and row counts."""
    from infra import db
    from infra.lake import lake_from_settings
    from infra.services import ensure_services
    from infra.settings import get_settings
    from ingestion.files.security import RejectedFile
    from ingestion.files.service import process_upload, receive_upload

    settings = get_settings()
    database_url = ensure_services(settings, broker=False).database_url
    db.migrate(database_url)
    lake = lake_from_settings(settings)
    lake.ensure_writable()
    storage = settings.uploads_dir or settings.home_dir / "uploads"
    defaults = _defaults(default)

    table = Table(
        "file", "upload", "status", "dataset", "confidence", "read", "landed", "quarantined", "note"
    )
    failed = False
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        for path in paths:
            task = bar.add_task(path.name, total=None)
            try:
                receipt = receive_upload(
                    path,
                    path.name,
                    org,
                    database_url=database_url,
                    storage_dir=storage,
                    max_bytes=settings.upload_max_bytes,
                    source_kind="cli",
                )
            except RejectedFile as exc:
                table.add_row(path.name, "-", "[red]rejected", "", "", "", "", "", str(exc))
                failed = True
                continue
            report = process_upload(
                receipt.upload_id,
                database_url=database_url,
                lake=lake,
                default_tz=tz,
                defaults=defaults,
                progress=lambda n, t=task: bar.advance(t, n),
            )
            bar.update(task, total=bar.tasks[task].completed)
            status = report["status"]
            note = report["error"] or ""
            if status == "duplicate":
                note = f"same content as upload {report['duplicate_of']}"
            failed |= status == "failed"
            conf = report["mapping_confidence"]
            table.add_row(
                path.name,
                str(report["id"]),
                status,
                report["dataset"] or "",
                f"{conf:.2f}" if conf is not None else "",
                str(report["rows_read"] or ""),
                str(report["rows_landed"] or ""),
                str(report["rows_quarantined"] or ""),
                note,
            )
    console.print(table)
    if failed:
        raise typer.Exit(code=1)
