"""File uploads of the caller's organization (the API door onto `ingestion.files`).

`POST /uploads` streams the multipart body straight to a spool file under the uploads directory while
counting bytes, so memory stays flat and an oversized body is cut off with 413 at the limit (earlier still
when Content-Length already says so). The library then stores it content-addressed, checks the content
(never the extension: 415 for anything that is not CSV/XLSX/JSON/JSONL/Parquet), recognises a duplicate by
sha256 and records it in ops.uploads for the caller's organization.

Inline or background: files up to `INLINE_MAX_BYTES` are processed inside the request (a second or so), so
the client gets the final report — landed, quarantined, held for mapping — in one round trip (201). Bigger
files answer 202 at once with status `received` and are processed after the response in a child process
of their own (`serving_api.upload_worker`: own connections, lower CPU priority, a bounded number at once),
so a large file costs neither the API's CPU share, its memory, nor a pooled connection; the client polls
`GET /uploads/{id}`. Holding a request open for minutes would tie up a worker and run into
proxy timeouts. Processing is idempotent (`process_upload` commits with a per-upload Delta app transaction),
so an upload left `received` by a restart can simply be processed again.

Reads are authorised by row-level security: the upload must be visible through the caller's `OrgSession`
before the library (which connects as the pipeline) reports on it or re-processes it; quarantined rows are
paged through the session as well (ops.quarantine inherits the upload's visibility, 095_uploads_api.sql).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from infra.lake import lake_from_settings
from infra.settings import Settings
from ingestion import files
from serving_api import repository
from serving_api.deps import OrgSession, api_state, scoped
from serving_api.errors import STANDARD_ERRORS, ApiError, error_responses
from serving_api.models import GenericPage, Page
from serving_api.repository import SERVED_TABLES, Dataset, TableQuery, fetch_page
from serving_api.security import Permission
from serving_api.state import ApiState
from serving_api.tabular import TableParams, table_params, tabular_response, tabular_responses

log = logging.getLogger(__name__)

INLINE_MAX_BYTES = 8 * 1024 * 1024
# Multipart framing (boundaries, part headers) on top of the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
_QUARANTINE = Dataset(
    "quarantine", "ops.quarantine", "created_at", ("upload_id", "id"), ("upload_id",), date_col=None
)
_QUARANTINE_FIELDS = ("id", "row_number", "sheet", "raw_text", "raw_json", "reason")
_UPLOAD_ID = PathParam(ge=1, le=2**63 - 1)
_LIST_FIELDS = (
    "id", "org_id", "file_name", "source", "sha256", "size_bytes", "format", "status", "duplicate_of",
    "dataset", "mapping_confidence", "rows_read", "rows_landed", "rows_quarantined", "error", "batch_id",
    "created_at", "updated_at", "landed_at",
)  # fmt: skip

router = APIRouter(tags=["uploads"], responses=error_responses(*STANDARD_ERRORS))
Session = Annotated[OrgSession, Depends(scoped(Permission.org_read))]
Writer = Annotated[OrgSession, Depends(scoped(Permission.upload_write))]


class QuarantinedRow(BaseModel):
    row_number: int | None = Field(
        description="1-based row of the source file: the line a CSV record starts on (a quoted value may span "
        "lines), the sheet row for workbooks, the record's position in a JSON array, the line in JSON Lines."
    )
    sheet: str | None = None
    raw_text: str | None = Field(default=None, description="The row as it appeared in the file.")
    raw_json: Any = Field(default=None, description="The row as parsed (JSON sources).")
    reason: str


class UploadReport(BaseModel):
    """An upload's status, detection, mapping, counts and profile (ops.uploads)."""

    id: int
    org_id: str
    file_name: str
    source: str
    sha256: str
    size_bytes: int
    format: str | None
    status: Literal["received", "held_for_mapping", "landed", "failed", "duplicate"]
    duplicate_of: int | None = Field(description="The original upload when status is `duplicate`.")
    dataset: str | None
    detected_schema: dict[str, Any] | None
    mapping: dict[str, Any] | None
    mapping_confidence: float | None
    rows_read: int | None
    rows_landed: int | None
    rows_quarantined: int | None
    profile: dict[str, Any] | None
    error: str | None = Field(description="Why the upload failed, is held, or is a duplicate.")
    batch_id: str | None
    created_at: str
    landed_at: str | None
    quarantine_sample: list[QuarantinedRow] = Field(description="The first quarantined rows.")


class QuarantineRow(QuarantinedRow):
    id: int


class QuarantinePage(Page):
    data: list[QuarantineRow]


class MappingRequest(BaseModel):
    """How the held file fills a canonical dataset; omitted options are taken from the detection."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal[tuple(sorted(files.CANONICAL_DATASETS))]  # type: ignore[valid-type]
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical field → source column, e.g. {'ts_utc': 'time'}."
    )
    constants: dict[str, str | float | int | bool] = Field(
        default_factory=dict, description="Canonical field → value for every row (e.g. {'zone': 'SE3'})."
    )
    timezone: str | None = Field(default=None, max_length=64, description="Zone of naive local timestamps.")
    layout: Literal["long", "wide_hours", "wide_columns"] | None = None
    date_column: str | None = Field(default=None, max_length=200)
    hour_column: str | None = Field(default=None, max_length=200)
    hour_convention: Literal["ending", "beginning"] | None = None
    hour_numbering: Literal["auto", "clock", "elapsed"] | None = Field(
        default=None,
        description="How hour numbers count on DST days: clock (wall-clock hours, the repeated fall-back hour "
        "marked, e.g. HE02*), elapsed (hours since local midnight, 1..25 / 1..23) or auto (from the file).",
    )
    wide_columns: dict[str, str] = Field(default_factory=dict)
    wide_field: Literal["hour", "zone", "market", "fuel"] | None = None
    value_field: str | None = Field(default=None, max_length=64)
    ts_format: str | None = Field(default=None, max_length=64)
    decimal: dict[str, Literal["dot", "comma"]] = Field(default_factory=dict)


def uploads_dir(settings: Settings) -> Path:
    return settings.uploads_dir or settings.home_dir / "uploads"


def _report_response(report: dict[str, Any], status_code: int) -> JSONResponse:
    return JSONResponse(UploadReport.model_validate(report).model_dump(mode="json"), status_code=status_code)


class _FileSpool:
    """Callbacks of python-multipart's streaming parser: the part named `file` goes to `path`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.filename: str | None = None
        self.size = 0
        self.found = False
        self._out: Any = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_header_field", self._header_field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_header_value", self._header_value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and not self.found:
            self.found = True
            self.filename = options.get(b"filename", b"upload").decode("utf-8", "replace")
            self._out = self.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise _TooLarge
        self._out.write(data[start:end])

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def close(self) -> None:
        self._part_end()


class _TooLarge(Exception):
    pass


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"file exceeds the {max_bytes:,}-byte upload limit",
        {"max_bytes": max_bytes},
    )


async def _spooled_file(request: Request, spool_path: Path, max_bytes: int) -> _FileSpool:
    """The multipart body's `file` part written to `spool_path` as it arrives (never held in memory)."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with the file in a field named `file`"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _MULTIPART_OVERHEAD:
        raise _too_large(max_bytes)
    spool = _FileSpool(spool_path, max_bytes)
    try:
        parser = MultipartParser(boundary, spool.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        raise _too_large(max_bytes) from None
    except (MultipartParseError, ValueError) as exc:
        raise ApiError(400, "malformed_multipart", f"the multipart body is malformed: {exc}") from None
    finally:
        spool.close()
    if not spool.found:
        raise ApiError(422, "missing_file", "the multipart body has no field named `file`")
    return spool


_worker_slots: dict[int, asyncio.Semaphore] = {}  # per event loop (tests run several apps)


async def _process_in_background(state: ApiState, upload_id: int) -> None:
    """Process the upload in a child process (serving_api.upload_worker) with its own connections; at most
    `ApiOptions.upload_worker_processes` at once per API process, the rest wait here (status `received`)."""
    loop_id = id(asyncio.get_running_loop())
    slots = _worker_slots.get(loop_id)
    if slots is None:
        slots = _worker_slots[loop_id] = asyncio.Semaphore(state.options.upload_worker_processes)
    job = pickle.dumps((upload_id, state.database_url, state.settings))
    async with slots:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving_api.upload_worker", stdin=asyncio.subprocess.PIPE
        )
        await proc.communicate(job)
    if proc.returncode != 0:  # the upload stays `received`; processing it again is safe
        log.warning("upload worker for upload %s exited with %s", upload_id, proc.returncode)


_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": UploadReport, "description": "Received and processed inline (small file), or a duplicate"},
    202: {"model": UploadReport, "description": "Received; processing continues in the background"},
    **error_responses(413, 415),
}
_UPLOAD_RESPONSES[413]["description"] = "The file exceeds the upload limit"
_UPLOAD_RESPONSES[415]["description"] = (
    "Not multipart/form-data, or the file's content is not CSV, XLSX, JSON, JSON-Lines or Parquet (or unsafe)"
)
_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadReport,
    responses=_UPLOAD_RESPONSES,
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a market data file (CSV, XLSX, JSON, JSON-Lines, Parquet)",
)
async def create_upload(request: Request, session: Writer, background: BackgroundTasks):
    state = api_state(request)
    settings = state.settings
    max_bytes = settings.upload_max_bytes
    spool_dir = uploads_dir(settings) / ".api-spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    spool_path = spool_dir / uuid.uuid4().hex
    org_id = session.principal.org_id
    try:
        spool = await _spooled_file(request, spool_path, max_bytes)
        receipt = await asyncio.to_thread(
            files.receive_upload,
            spool_path,
            spool.filename or "upload",
            org_id,
            database_url=state.database_url,
            storage_dir=uploads_dir(settings),
            max_bytes=max_bytes,
        )
    except files.RejectedFile as exc:
        raise ApiError(415, "rejected_file", str(exc)) from None
    finally:
        spool_path.unlink(missing_ok=True)
    deferred = receipt.status == "received" and receipt.size_bytes > INLINE_MAX_BYTES
    if receipt.status == "received" and not deferred:
        report = await asyncio.to_thread(
            files.process_upload,
            receipt.upload_id,
            database_url=state.database_url,
            lake=lake_from_settings(settings),
        )
    else:
        report = await asyncio.to_thread(
            files.upload_report, receipt.upload_id, database_url=state.database_url
        )
    await repository.audit(
        await session.conn(),
        org_id,
        session.principal.actor,
        "upload.create",
        str(receipt.upload_id),
        {
            "file_name": receipt.file_name,
            "sha256": receipt.sha256,
            "size_bytes": receipt.size_bytes,
            "status": report["status"],
            "duplicate_of": receipt.duplicate_of,
        },
    )
    # Commit the audit row and give the pooled connection back now: background work opens its own
    # connections, and must never keep this request's transaction idle for as long as it runs.
    await session.close(None)
    if deferred:
        background.add_task(_process_in_background, state, receipt.upload_id)
        return _report_response(report, 202)
    if receipt.duplicate_of is not None and await asyncio.to_thread(
        _never_processed, receipt.duplicate_of, state.database_url
    ):
        # The original was registered but its processing died with a worker: without this, every later upload of
        # the same content is a duplicate of a file that never lands. Finish it (a no-op if another worker holds
        # its lock); the duplicate's report names it, and GET /uploads/{duplicate_of} shows its progress.
        background.add_task(_process_in_background, state, receipt.duplicate_of)
    return _report_response(report, 201)


def _never_processed(upload_id: int, database_url: str) -> bool:
    return files.upload_report(upload_id, database_url=database_url)["status"] == "received"


@router.get(
    "/uploads",
    response_model=GenericPage,
    responses=tabular_responses(GenericPage),
    summary="Uploads of the caller's organization",
)
async def uploads(
    request: Request,
    session: Session,
    params: Annotated[TableParams, Depends(table_params)],
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,40}$")] = None,
):
    # The server-side storage path is not the client's business.
    if params.fields and "stored_path" in params.fields:
        raise ApiError(400, "unknown_fields", "unknown field(s) in `fields`", {"unknown": ["stored_path"]})
    params = dataclasses.replace(params, fields=params.fields or _LIST_FIELDS)
    return await tabular_response(request, session, SERVED_TABLES["uploads"], {"status": status}, params)


async def _visible_upload(session: OrgSession, upload_id: int) -> dict[str, Any]:
    """The upload's status row when the caller's organization owns it (row-level security decides)."""
    rows = await repository.rows_of(
        await session.conn(), "SELECT id, status, size_bytes FROM ops.uploads WHERE id = %s", (upload_id,)
    )
    if not rows:
        raise ApiError(404, "not_found", f"no upload {upload_id} in your organization")
    return rows[0]


@router.get(
    "/uploads/{upload_id}",
    response_model=UploadReport,
    summary="One upload: status, detected schema, mapping and confidence, row counts, profile",
    responses=error_responses(404),
)
async def upload_status(request: Request, session: Session, upload_id: Annotated[int, _UPLOAD_ID]):
    await _visible_upload(session, upload_id)
    report = await asyncio.to_thread(
        files.upload_report, upload_id, database_url=api_state(request).database_url
    )
    return _report_response(report, 200)


@router.get(
    "/uploads/{upload_id}/quarantine",
    response_model=QuarantinePage,
    summary="Rows of an upload that were not landed, with the reason (file order, paged)",
    responses=error_responses(404),
)
async def upload_quarantine(
    request: Request,
    session: Session,
    upload_id: Annotated[int, _UPLOAD_ID],
    limit: Annotated[int, Query(ge=1, le=10_000, description="Rows per page")] = 500,
    cursor: Annotated[
        str | None,
        Query(max_length=2000, pattern=r"^[A-Za-z0-9_\-]*$", description="next_cursor of the previous page"),
    ] = None,
):
    await _visible_upload(session, upload_id)
    query = TableQuery(_QUARANTINE, {"upload_id": upload_id}, None, None, _QUARANTINE_FIELDS, limit, cursor)
    return await fetch_page(api_state(request), await session.conn(), query)


@router.post(
    "/uploads/{upload_id}/mapping",
    response_model=UploadReport,
    summary="Land a held (or failed) upload with an explicit column mapping",
    responses={
        **error_responses(404, 409),
        422: error_responses(422)[422]
        | {"description": "The mapping names columns the file lacks or leaves required fields unset"},
    },
)
async def upload_mapping(
    request: Request, session: Writer, upload_id: Annotated[int, _UPLOAD_ID], body: MappingRequest
):
    state = api_state(request)
    await _visible_upload(session, upload_id)
    mapping = body.model_dump(exclude_none=True)
    try:
        report = await asyncio.to_thread(
            files.apply_explicit_mapping,
            upload_id,
            mapping,
            database_url=state.database_url,
            lake=lake_from_settings(state.settings),
        )
    except files.UploadError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_mapping", str(exc)) from None
    await repository.audit(
        await session.conn(),
        session.principal.org_id,
        session.principal.actor,
        "upload.mapping",
        str(upload_id),
        {"dataset": body.dataset, "status": report["status"]},
    )
    return _report_response(report, 200)
