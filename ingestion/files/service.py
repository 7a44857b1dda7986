"""The file-upload pipeline both doors (POST /uploads and the landing folder) call.

`receive_upload` streams a file to content-addressed storage under a size limit, checks its content and
records it (or recognises a duplicate by sha256); `process_upload` detects the layout, maps it to a
canonical dataset (or holds it for an explicit mapping), validates, lands the good rows in
`bronze/files__<dataset>` exactly once and quarantines the rest with reasons; `apply_explicit_mapping`
re-processes a held upload with a user's mapping; `upload_report` is the preview; `scan_landing_folder`
lists new files of the watched folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import psycopg
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from psycopg.types.json import Jsonb

from infra.db import connect
from infra.lake import Lake, writer_properties
from ingestion.files import security
from ingestion.files.canonical import CANONICAL_DATASETS
from ingestion.files.mapping import AUTO_LAND_CONFIDENCE, Mapping, proposed_mapping, validated_mapping
from ingestion.files.parsing import now_utc
from ingestion.files.readers import RawChunk, open_reader, sample_tables
from ingestion.files.transform import AmbiguousHours, CanonicalBuilder, ParsedChunk, QuarantineRow
from ingestion.reference import MARKET_FEED_ORG

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024
# Parsed chunks waiting to be built, and built batches waiting for the Delta writer: three stages on their own
# threads, so that two cores are busy. A chunk of a big CSV is 200,000 rows, ~13 MB parsed and ~30 MB built
# (constant columns are repeated per row), and every queued item adds to the upload's peak memory: on the 1 GB
# benchmark, deeper queues bought no speed and up to 120 MiB more peak.
_READ_AHEAD_CHUNKS = 1
_READ_AHEAD_BATCHES = 1
# Names of an upload's stage threads (delta-rs encodes on the calling thread and its own runtime's): what a
# profiler or `benchmarks/file_ingest.py` attributes CPU by.
PARSING_THREAD = "upload-parsing"
BUILDING_THREAD = "upload-building"
_Item = TypeVar("_Item")
# Advisory-lock key space of upload processing ("OBFI" in the high bytes, upload id in the low ones).
_ADVISORY_BASE = 0x4F42_4649_0000_0000


@dataclass(frozen=True)
class UploadReceipt:
    """What `receive_upload` recorded."""

    upload_id: int
    status: str
    sha256: str
    size_bytes: int
    format: str
    file_name: str
    duplicate_of: int | None = None


class UploadError(RuntimeError):
    """The upload cannot be processed in its current state (message says why)."""


def app_id(upload_id: int) -> str:
    """The delta-rs application id whose transaction marks an upload as landed in a table."""
    return f"optibid.files.upload.{upload_id}"


# --- receive -------------------------------------------------------------------------------------


def receive_upload(
    source: BinaryIO | Path,
    filename: str,
    org_id: str,
    *,
    database_url: str,
    storage_dir: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    source_kind: str = "api",
) -> UploadReceipt:
    """Store and register one uploaded file.

    Raises `security.RejectedFile` (with the reason) for files refused before parsing — oversized,
    unknown or legacy binary formats, zip bombs — and keeps nothing of them.
    """
    name = security.sanitised_file_name(filename)
    storage_dir.mkdir(parents=True, exist_ok=True)
    incoming = storage_dir / ".incoming"
    incoming.mkdir(exist_ok=True)
    tmp = incoming / uuid.uuid4().hex
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            stream = source.open("rb") if isinstance(source, Path) else source
            try:
                while block := stream.read(_COPY_CHUNK):
                    size += len(block)
                    if size > max_bytes:
                        # Stop at the limit: an oversized upload never fills the disk.
                        raise security.RejectedFile(f"file exceeds the {max_bytes:,}-byte upload limit")
                    digest.update(block)
                    out.write(block)
            finally:
                if isinstance(source, Path):
                    stream.close()
        fmt = security.detected_format(tmp)
        sha = digest.hexdigest()
        stored = storage_dir / sha[:2] / f"{sha}"
        stored.parent.mkdir(exist_ok=True)
        if stored.exists():
            tmp.unlink()
        else:
            tmp.replace(stored)
    finally:
        tmp.unlink(missing_ok=True)
    with connect(database_url) as conn:
        row = conn.execute(
            """INSERT INTO ops.uploads
                   (org_id, file_name, source, sha256, size_bytes, format, stored_path, status)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 'received')
               ON CONFLICT (org_id, sha256) WHERE status NOT IN ('duplicate', 'failed') DO NOTHING
               RETURNING id""",
            (org_id, name, source_kind, sha, size, fmt, str(stored)),
        ).fetchone()
        if row:
            return UploadReceipt(row[0], "received", sha, size, fmt, name)
        original = conn.execute(
            """SELECT id FROM ops.uploads WHERE org_id = %s AND sha256 = %s
               AND status NOT IN ('duplicate', 'failed')""",
            (org_id, sha),
        ).fetchone()
        dup = conn.execute(
            """INSERT INTO ops.uploads (org_id, file_name, source, sha256, size_bytes, format, stored_path,
                                        status, duplicate_of, error)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 'duplicate', %s, %s) RETURNING id""",
            (
                org_id,
                name,
                source_kind,
                sha,
                size,
                fmt,
                str(stored),
                original[0],
                f"same content as upload {original[0]}: not landed again",
            ),
        ).fetchone()
    return UploadReceipt(dup[0], "duplicate", sha, size, fmt, name, duplicate_of=original[0])


# --- process -------------------------------------------------------------------------------------


def process_upload(
    upload_id: int,
    *,
    database_url: str,
    lake: Lake,
    default_tz: str = "UTC",
    defaults: dict[str, Any] | None = None,
    mapping: Mapping | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Detect, map, validate and land one received upload; its report (see `upload_report`).

    Safe to call again after a crash: the Delta commit carries an app transaction per upload, so a
    retry re-derives the counts and quarantine but never appends the rows a second time.
    """
    with psycopg.connect(database_url, autocommit=True) as lock_conn:
        got = lock_conn.execute(
            "SELECT pg_try_advisory_lock(%s::bigint)", (_ADVISORY_BASE + upload_id,)
        ).fetchone()
        if not got[0]:
            raise UploadError(f"upload {upload_id} is being processed by another worker")
        try:
            return _process_locked(upload_id, database_url, lake, default_tz, defaults, mapping, progress)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s::bigint)", (_ADVISORY_BASE + upload_id,))


def _process_locked(
    upload_id: int,
    database_url: str,
    lake: Lake,
    default_tz: str,
    defaults: dict[str, Any] | None,
    mapping: Mapping | None,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, format, stored_path, file_name, org_id, mapping FROM ops.uploads WHERE id = %s",
            (upload_id,),
        ).fetchone()
    if row is None:
        raise UploadError(f"no upload {upload_id}")
    status, fmt, stored_path, file_name, org_id, saved_mapping = row
    if status in ("duplicate", "landed"):
        # Landed is final: a different mapping would describe rows other than the ones in the lake.
        return upload_report(upload_id, database_url=database_url)
    if mapping is None and saved_mapping and saved_mapping.get("source") == "explicit":
        mapping = Mapping.from_json(saved_mapping)
    try:
        reader = open_reader(Path(stored_path), fmt)
        samples = sample_tables(reader)
        detected = {
            "format": reader.info.format,
            "encoding": reader.info.encoding,
            "delimiter": reader.info.delimiter,
            "header_row": {str(k): v for k, v in reader.info.header_row.items()},
            "columns": {str(k): v for k, v in reader.info.columns.items()},
        }
        if not samples or all(t.num_rows == 0 for t in samples.values()):
            raise security.RejectedFile("no data rows found under the header")
        first_sheet, sample = next(iter(samples.items()))
        if mapping is None:
            mapping = proposed_mapping(
                sample, file_name=file_name, sheet=first_sheet, default_tz=default_tz, defaults=defaults
            )
            if mapping.confidence < AUTO_LAND_CONFIDENCE or _unresolved(mapping):
                _record(
                    database_url,
                    upload_id,
                    status="held_for_mapping",
                    detected=detected,
                    mapping=mapping,
                    error="; ".join(mapping.reasons)
                    or f"mapping confidence {mapping.confidence:.2f} is below {AUTO_LAND_CONFIDENCE}",
                )
                return upload_report(upload_id, database_url=database_url)
        try:
            _land(upload_id, reader, mapping, file_name, org_id, database_url, lake, detected, progress)
        except AmbiguousHours as exc:
            # Found while streaming, before the one commit: nothing landed, the upload waits for a mapping.
            _record(
                database_url, upload_id, status="held_for_mapping", detected=detected, mapping=mapping, error=str(exc)
            )
    except (security.RejectedFile, ValueError, OSError, pa.ArrowException, KeyError, DeltaError) as exc:
        # Nothing was committed (one Delta commit per upload); a failed upload can be processed again.
        _record(database_url, upload_id, status="failed", error=f"{type(exc).__name__}: {exc}")
    return upload_report(upload_id, database_url=database_url)


def _unresolved(m: Mapping) -> bool:
    return any(r.startswith("no ") for r in m.reasons)


def _land(
    upload_id: int,
    reader: Any,
    mapping: Mapping,
    file_name: str,
    org_id: str,
    database_url: str,
    lake: Lake,
    detected: dict[str, Any],
    progress: Callable[[int], None] | None,
) -> None:
    ds = CANONICAL_DATASETS[mapping.dataset]
    batch_id = uuid.uuid4().hex
    builder = CanonicalBuilder(
        mapping,
        upload_id=upload_id,
        file_name=file_name,
        org_id=org_id,
        batch_id=batch_id,
        ingested_at=now_utc(),
    )
    uri = lake.table_uri("bronze", ds.table_name)
    try:
        already = DeltaTable(uri, storage_options=lake.storage_options).transaction_version(app_id(upload_id))
    except TableNotFoundError:
        already = None
    skipped: dict[str, str] = {}
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as qfile:
        writer = csv.writer(qfile)

        failures: list[Exception] = []

        def parsed_chunks() -> Iterator[tuple[RawChunk, ParsedChunk | None]]:
            """Each raw chunk, with its rows already parsed when that can run ahead of building (None when it
            cannot, or when the chunk is another layout)."""
            for chunk in reader.chunks():
                ahead = builder.parses_ahead and builder.fits(chunk.table.column_names)
                yield chunk, builder.parse(chunk) if ahead else None

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                # Reading and parsing the next chunks (their own thread) overlaps building this one.
                with contextlib.closing(
                    _read_ahead(parsed_chunks(), _READ_AHEAD_CHUNKS, PARSING_THREAD)
                ) as chunks:
                    for chunk, parsed in chunks:
                        if not builder.fits(chunk.table.column_names):
                            # Another layout in the same workbook (a notes or summary sheet): reported, not guessed.
                            skipped.setdefault(str(chunk.sheet), "columns do not match the mapping")
                            continue
                        landed, quarantined = builder.build(parsed or chunk)
                        rows_seen = chunk.table.num_rows + len(chunk.malformed)
                        del chunk, parsed  # not kept alive while the writer takes the batches
                        _spool_quarantine(writer, upload_id, quarantined)
                        if progress:
                            progress(int(rows_seen))
                        yield from landed.to_batches()
                landed, quarantined = builder.flush()
                _spool_quarantine(writer, upload_id, quarantined)
                yield from landed.to_batches()
            except Exception as exc:
                failures.append(exc)  # streamed readers find broken input late: keep the reader's own error
                raise

        if already is None:
            # One commit per upload, tagged with the upload's app transaction: all rows or none, once.
            ahead = _read_ahead(batches(), _READ_AHEAD_BATCHES, BUILDING_THREAD)
            try:
                write_deltalake(
                    uri,
                    pa.RecordBatchReader.from_batches(ds.bronze_schema, ahead),
                    mode="append",
                    storage_options=lake.storage_options or None,
                    writer_properties=writer_properties("SNAPPY"),  # delta-rs's default codec: cheap to write
                    commit_properties=CommitProperties(
                        app_transactions=[Transaction(app_id(upload_id), 1)],
                        custom_metadata={"optibid.upload_id": str(upload_id), "optibid.batch_id": batch_id},
                    ),
                )
            except DeltaError:
                if failures:  # delta-rs wraps it in a generic error with a traceback: surface the cause
                    raise failures[0] from None
                raise
            finally:
                ahead.close()  # the building thread is done (or stopped) before the quarantine is read
        else:
            for _ in batches():  # landed before a crash: only rebuild counts, profile and quarantine
                pass
        qfile.seek(0)
        with connect(database_url) as conn:
            conn.execute("DELETE FROM ops.quarantine WHERE upload_id = %s", (upload_id,))
            with conn.cursor().copy(
                "COPY ops.quarantine (upload_id, row_number, sheet, raw_text, raw_json, reason) FROM STDIN "
                "WITH (FORMAT csv)"
            ) as copy:
                while block := qfile.read(_COPY_CHUNK):
                    copy.write(block)
            profile = builder.profile()
            if skipped:
                detected = {**detected, "skipped_sheets": skipped}
            conn.execute(
                """UPDATE ops.uploads SET status = 'landed', dataset = %s, detected_schema = %s, mapping = %s,
                          mapping_confidence = %s, rows_read = %s, rows_landed = %s, rows_quarantined = %s,
                          profile = %s, error = NULL, batch_id = %s, landed_at = now(), updated_at = now()
                   WHERE id = %s""",
                (
                    ds.name,
                    Jsonb(detected),
                    Jsonb(mapping.as_json()),
                    mapping.confidence,
                    builder.rows_read,
                    builder.rows_landed,
                    builder.rows_quarantined,
                    Jsonb(profile),
                    batch_id,
                    upload_id,
                ),
            )


def _read_ahead(items: Iterator[_Item], depth: int, thread_name: str = "read-ahead") -> Iterator[_Item]:
    """`items`, produced by a thread of their own (`thread_name`) up to `depth` ahead of the caller; the
    producer's exception is raised here, and closing this generator stops the producer and waits for it.

    Parsing a chunk (pyarrow's CSV reader), building it (Arrow and numpy kernels) and delta-rs encoding it mostly
    run without the GIL: on two cores they overlap instead of taking turns.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
            hand_over(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over(exc)

    producer = threading.Thread(target=produce, name=thread_name, daemon=True)
    producer.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def _spool_quarantine(writer: Any, upload_id: int, rows: list[QuarantineRow]) -> None:
    for q in rows:
        # NUL cannot be stored in Postgres text; it only appears in binary junk, so it is made visible.
        text = q.raw_text.replace("\x00", "\\0") if q.raw_text is not None else None
        raw_json = q.raw_json.replace("\\u0000", "\\\\0") if q.raw_json is not None else None
        writer.writerow([upload_id, q.row_number, q.sheet, text, raw_json, q.reason])


def _record(
    database_url: str,
    upload_id: int,
    *,
    status: str,
    detected: dict[str, Any] | None = None,
    mapping: Mapping | None = None,
    error: str | None = None,
) -> None:
    with connect(database_url) as conn:
        conn.execute(
            """UPDATE ops.uploads SET status = %s, detected_schema = COALESCE(%s, detected_schema),
                      mapping = COALESCE(%s, mapping), mapping_confidence = COALESCE(%s, mapping_confidence),
                      dataset = COALESCE(%s, dataset), error = %s, updated_at = now()
               WHERE id = %s""",
            (
                status,
                Jsonb(detected) if detected else None,
                Jsonb(mapping.as_json()) if mapping else None,
                mapping.confidence if mapping else None,
                mapping.dataset if mapping else None,
                error,
                upload_id,
            ),
        )


def apply_explicit_mapping(
    upload_id: int,
    mapping: dict[str, Any],
    *,
    database_url: str,
    lake: Lake,
) -> dict[str, Any]:
    """Land a held (or failed) upload with a user-supplied mapping; ValueError if the mapping does not fit."""
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, detected_schema, mapping FROM ops.uploads WHERE id = %s", (upload_id,)
        ).fetchone()
    if row is None:
        raise UploadError(f"no upload {upload_id}")
    status, detected, proposed = row
    if status not in ("held_for_mapping", "failed", "received"):
        raise UploadError(
            f"upload {upload_id} is {status}; only held, failed or received uploads take a mapping"
        )
    columns = [c for cols in (detected or {}).get("columns", {}).values() for c in cols]
    merged = dict(mapping)
    if proposed:  # fill what the user left out (e.g. decimal styles, date format) from the detection
        for key in ("ts_format", "decimal", "timezone", "layout", "hour_convention", "hour_numbering"):
            merged.setdefault(key, proposed.get(key))
        merged["decimal"] = {**(proposed.get("decimal") or {}), **(mapping.get("decimal") or {})}
    explicit = validated_mapping({k: v for k, v in merged.items() if v is not None}, columns)
    _record(database_url, upload_id, status="received", mapping=explicit)
    return process_upload(upload_id, database_url=database_url, lake=lake, mapping=explicit)


# --- preview -------------------------------------------------------------------------------------


def upload_report(upload_id: int, *, database_url: str, quarantine_limit: int = 20) -> dict[str, Any]:
    """Status, detected schema, mapping and confidence, row counts, profile, first quarantined rows."""
    with connect(database_url) as conn:
        cur = conn.execute(
            """SELECT id, org_id, file_name, source, sha256, size_bytes, format, status, duplicate_of,
                      dataset, detected_schema, mapping, mapping_confidence, rows_read, rows_landed,
                      rows_quarantined, profile, error, batch_id, created_at, landed_at
               FROM ops.uploads WHERE id = %s""",
            (upload_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise UploadError(f"no upload {upload_id}")
        report = dict(zip([d.name for d in cur.description], row, strict=True))
        q = conn.execute(
            """SELECT row_number, sheet, raw_text, raw_json, reason FROM ops.quarantine WHERE upload_id = %s
               ORDER BY row_number NULLS LAST, id LIMIT %s""",
            (upload_id, quarantine_limit),
        ).fetchall()
    report["quarantine_sample"] = [
        {"row_number": r[0], "sheet": r[1], "raw_text": r[2], "raw_json": r[3], "reason": r[4]} for r in q
    ]
    for key in ("created_at", "landed_at"):
        if report[key] is not None:
            report[key] = report[key].isoformat()
    return report


def quarantined_rows(upload_id: int, *, database_url: str) -> list[dict[str, Any]]:
    """Every quarantined row of an upload, in file order."""
    with connect(database_url) as conn:
        rows = conn.execute(
            """SELECT row_number, sheet, raw_text, raw_json, reason FROM ops.quarantine WHERE upload_id = %s
               ORDER BY sheet NULLS FIRST, row_number NULLS LAST, id""",
            (upload_id,),
        ).fetchall()
    return [
        {"row_number": r[0], "sheet": r[1], "raw_text": r[2], "raw_json": r[3], "reason": r[4]} for r in rows
    ]


# --- landing folder ------------------------------------------------------------------------------


def scan_landing_folder(landing_dir: Path, *, min_age_seconds: float = 0.0) -> list[Path]:
    """Files waiting in the landing folder (not hidden, not partial, not in processed/ or rejected/).

    `min_age_seconds` skips files still being copied in (modified too recently).
    """
    import time

    landing_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    out = []
    for p in sorted(landing_dir.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.endswith((".part", ".tmp", ".crdownload")):
            continue
        if now - p.stat().st_mtime < min_age_seconds:
            continue
        out.append(p)
    return out


def landing_files_by_org(landing_dir: Path, *, min_age_seconds: float = 1.0) -> list[tuple[str, Path]]:
    """(org_id, path) of every file waiting in the landing folder and its per-organization subfolders.

    Files at the folder's root are the public market feed (`MARKET_FEED_ORG`); files under
    `<landing>/<org_id>/` belong to that organization.
    """
    waiting = [(MARKET_FEED_ORG, path) for path in scan_landing_folder(landing_dir, min_age_seconds=min_age_seconds)]
    for sub in sorted(p for p in landing_dir.iterdir() if p.is_dir()):
        if sub.name in {"processed", "rejected"}:
            continue
        waiting += [(sub.name, path) for path in scan_landing_folder(sub, min_age_seconds=min_age_seconds)]
    return waiting


def archived_landing_file(path: Path, *, accepted: bool) -> Path:
    """Move a handled landing-folder file to processed/ or rejected/ (never overwriting); its new path."""
    target_dir = path.parent / ("processed" if accepted else "rejected")
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists():
        target = target_dir / f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}"
    shutil.move(str(path), target)
    return target


def ingest_landing_file(
    path: Path,
    org_id: str,
    *,
    database_url: str,
    lake: Lake,
    storage_dir: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    default_tz: str = "UTC",
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The landing-folder door: receive + process one file, then archive it; the upload report
    (or {'status': 'rejected', 'error': ...} for a file refused before it was registered)."""
    try:
        receipt = receive_upload(
            path,
            path.name,
            org_id,
            database_url=database_url,
            storage_dir=storage_dir,
            max_bytes=max_bytes,
            source_kind="landing",
        )
    except security.RejectedFile as exc:
        archived_landing_file(path, accepted=False)
        return {"status": "rejected", "file_name": path.name, "error": str(exc)}
    report = process_upload(
        receipt.upload_id, database_url=database_url, lake=lake, default_tz=default_tz, defaults=defaults
    )
    if receipt.duplicate_of is not None:
        original = upload_report(receipt.duplicate_of, database_url=database_url)
        if original["status"] == "received":
            # The first drop of this content was registered but never processed (a crash in between): without
            # this, every later drop is a duplicate of an upload that never lands. Finish the original.
            with contextlib.suppress(UploadError):  # unless another worker is processing it right now
                report = process_upload(
                    receipt.duplicate_of, database_url=database_url, lake=lake, default_tz=default_tz, defaults=defaults
                )
    archived_landing_file(path, accepted=report["status"] in ("landed", "duplicate", "held_for_mapping"))
    return report


def as_json(report: dict[str, Any]) -> str:
    """A report as JSON text (for the CLI and logs)."""
    return json.dumps(report, default=str, indent=2)
