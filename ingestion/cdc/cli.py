"""`optibid ingest cdc`: drain Kafka topics into bronze once, or `--follow` them; lag and dead letters.

Mounted by `app/cli.py`; also runnable as `python -m ingestion.cdc.cli` (used by the crash tests).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

app = typer.Typer(
    help="Kafka CDC and market ticks into bronze Delta tables (exactly once).", invoke_without_command=True
)


def _lake(lake_uri: str | None):
    from infra.lake import Lake, lake_from_settings
    from infra.settings import get_settings

    settings = get_settings()
    return Lake(lake_uri, dict(settings.lake_storage_options)) if lake_uri else lake_from_settings(settings)


def _client_config(bootstrap: str | None) -> dict[str, object]:
    from infra.services import embedded_broker_bootstrap, kafka_security_config
    from infra.settings import get_settings

    settings = get_settings()
    servers = bootstrap or settings.kafka_bootstrap_servers or embedded_broker_bootstrap(settings)
    return {"bootstrap_servers": servers, **kafka_security_config(settings)}


@functools.cache
def _warehouse() -> str:
    """The warehouse URL, migrated (once per process: follow mode's lock and its real-time writer share it)."""
    from infra import db
    from infra.services import warehouse_url
    from infra.settings import get_settings

    url = warehouse_url(get_settings())
    db.migrate(url)
    return url


TopicOpt = Annotated[
    list[str] | None, typer.Option("--topic", "-t", help="Topic to ingest (repeatable); default all OptiBid topics.")
]
BootstrapOpt = Annotated[str | None, typer.Option(help="Kafka bootstrap servers; default KAFKA_BOOTSTRAP_SERVERS.")]
LakeOpt = Annotated[str | None, typer.Option("--lake", help="Lake root; default OPTIBID_LAKE_URI.")]


@app.callback()
def ingest(
    ctx: typer.Context,
    topics: TopicOpt = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep consuming until SIGTERM/Ctrl-C.")] = False,
    batch_events: Annotated[int, typer.Option(min=1, help="Micro-batch size limit (events).")] = 50_000,
    batch_seconds: Annotated[float, typer.Option(min=0.01, help="Micro-batch age limit in seconds (--follow).")] = 1.0,
    reset_policy: Annotated[
        str, typer.Option(help="When the broker's offsets restarted: 'earliest' (re-read, new epoch) or 'fail'.")
    ] = "earliest",
    fetch_processes: Annotated[
        int,
        typer.Option(min=0, help="Drain only: fetch processes, each decoding its records (0 = fetch in this process)."),
    ] = 0,
    member: Annotated[
        str | None,
        typer.Option(
            help="Run as member i of N consumer processes (e.g. 0/3): own partitions p % N == i, leased in "
            "Postgres; in --follow also take over a dead member's partitions.",
        ),
    ] = None,
    takeover_after: Annotated[
        float, typer.Option(min=0.0, help="With --member --follow: seconds a dead member's partitions stay free first.")
    ] = 10.0,
    realtime: Annotated[
        bool | None,
        typer.Option(
            "--realtime/--no-realtime",
            help="Keep the minute price KPIs in gold current from the ticks (default: on with --follow).",
        ),
    ] = None,
    bootstrap: BootstrapOpt = None,
    lake_uri: LakeOpt = None,
) -> None:
    """Drain every partition to its current end (default) or follow the topics continuously."""
    if ctx.invoked_subcommand is not None:
        return
    from ingestion.cdc.consumer import CdcConsumer
    from ingestion.cdc.topics import default_topics

    if reset_policy not in ("earliest", "fail"):
        raise typer.BadParameter("--reset-policy must be 'earliest' or 'fail'")
    from ingestion.cdc.leases import MemberRunningError, PartitionLeases, parse_member
    from ingestion.cdc.ownership import follow_mode_ownership
    from ingestion.cdc.realtime import MinuteKpiWriter

    try:
        membership = parse_member(member) if member else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--member") from None
    lake = _lake(lake_uri)
    leases = (
        PartitionLeases(_warehouse(), lake.root, *membership, takeover_after_seconds=takeover_after)
        if membership
        else None
    )
    kpi_writer = MinuteKpiWriter(_warehouse) if (follow if realtime is None else realtime) else None
    consumer = CdcConsumer(
        lake,
        _client_config(bootstrap),
        topics or default_topics(),
        batch_max_events=batch_events,
        batch_max_seconds=batch_seconds,
        reset_policy=reset_policy,  # type: ignore[arg-type]
        fetch_processes=fetch_processes,
        leases=leases,
        row_sink=kpi_writer,
    )
    ownership = (
        follow_mode_ownership(_warehouse(), lake.root, shared=leases is not None)
        if follow
        else contextlib.nullcontext(True)
    )
    try:
        with ownership as owner, leases or contextlib.nullcontext():
            if not owner:  # checked before the consumer connects to the broker
                typer.echo(
                    f"error: another follow-mode consumer owns the CDC tables of {lake.root} (one per lake, or a "
                    "group of --member consumers)",
                    err=True,
                )
                raise typer.Exit(2)
            with consumer, contextlib.closing(kpi_writer) if kpi_writer else contextlib.nullcontext():
                stats = _consume(consumer, follow)
    except MemberRunningError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = {
        "events_read": stats.events_read,
        "rows_written": stats.rows_written,
        "dead_lettered": stats.dead_lettered,
        "batches": stats.batches,
        "seconds": round(stats.seconds, 3),
        "events_per_second": round(stats.events_per_second),
        "lag_after": sum(p.lag for p in stats.lag_after),
        "warnings": stats.warnings,
    }
    typer.echo(json.dumps(summary))


def _consume(consumer, follow: bool):
    if not follow:
        return consumer.drain()
    stop = threading.Event()
    # The handler only sets a flag: the loop commits the batch in hand, then returns.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return consumer.follow(stop)


@app.command("lag")
def lag(topics: TopicOpt = None, bootstrap: BootstrapOpt = None, lake_uri: LakeOpt = None) -> None:
    """Per-partition lag between the broker and bronze."""
    from ingestion.cdc.consumer import CdcConsumer
    from ingestion.cdc.topics import default_topics

    with CdcConsumer(_lake(lake_uri), _client_config(bootstrap), topics or default_topics()) as consumer:
        for p in consumer.lag():
            typer.echo(
                f"{p.topic}[{p.partition}] next={p.next_offset} low={p.low_watermark} "
                f"high={p.high_watermark} epoch={p.epoch} lag={p.lag}"
            )


@app.command("dead-letters")
def show_dead_letters(
    hours: Annotated[float, typer.Option(help="Only those ingested in the last N hours.")] = 24.0,
    lake_uri: LakeOpt = None,
) -> None:
    """Recent dead letters: topic, partition, offset and reason."""
    from ingestion.cdc.queries import dead_letters

    frame = dead_letters(_lake(lake_uri), since=datetime.now(UTC) - timedelta(hours=hours))
    if frame.empty:
        typer.echo("no dead letters")
        return
    cols = ["_topic", "_partition", "_offset", "reason_code", "reason"]
    typer.echo(frame[cols].to_string(index=False, max_colwidth=100))


if __name__ == "__main__":
    app()
