"""Shared query parameters and response building for every tabular endpoint (JSON pages or exports)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse

from serving_api import exports, repository
from serving_api.cache import request_target
from serving_api.deps import OrgSession, api_state
from serving_api.errors import ApiError
from serving_api.metrics import route_template
from serving_api.models import API_PREFIX
from serving_api.org_scope import assume_api_role, set_org_scope
from serving_api.repository import Dataset, TableQuery
from serving_api.security import Permission

FIELDS_PATTERN = r"^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$"


@dataclass
class TableParams:
    t_from: datetime | None
    t_to: datetime | None
    fields: tuple[str, ...] | None
    limit: int
    cursor: str | None
    format: str


async def table_params(
    from_: Annotated[
        datetime | None, Query(alias="from", description="Inclusive start (UTC if no offset)")
    ] = None,
    to: Annotated[datetime | None, Query(description="Exclusive end (UTC if no offset)")] = None,
    fields: Annotated[
        str | None,
        Query(pattern=FIELDS_PATTERN, max_length=2000, description="Comma-separated columns to return"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Rows per page")] = 1000,
    cursor: Annotated[
        str | None,
        Query(max_length=2000, pattern=r"^[A-Za-z0-9_\-]*$", description="next_cursor of the previous page"),
    ] = None,
    format: Annotated[
        Literal["json", "csv", "parquet", "xlsx"], Query(description="json pages, or a streamed full export")
    ] = "json",
) -> TableParams:
    t_from, t_to = _utc(from_), _utc(to)
    if t_from and t_to and t_from > t_to:
        raise ApiError(400, "invalid_range", "`from` must not be after `to`")
    return TableParams(
        t_from, t_to, tuple(fields.split(",")) if fields else None, limit, cursor or None, format
    )


async def _closing(body: AsyncIterator[bytes], conn: psycopg.AsyncConnection) -> AsyncIterator[bytes]:
    try:
        async for block in body:
            yield block
    finally:
        await conn.close()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ApiError(400, "invalid_range", "timestamp out of range") from exc


def tabular_responses(model: type) -> dict[int | str, dict[str, Any]]:
    """OpenAPI 200 entry: the JSON page model plus the export media types."""
    return {
        200: {
            "model": model,
            "content": exports.export_openapi_content(),
            "description": "A JSON page, or the whole selection as CSV/Parquet/Excel with `format`",
        }
    }


async def tabular_response(
    request: Request,
    session: OrgSession,
    dataset: Dataset,
    filters: dict[str, Any],
    params: TableParams,
    precheck: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """A JSON page (cached when immutable) or a streamed export; `precheck` runs unless served from cache."""
    state = api_state(request)
    query = TableQuery(
        dataset, filters, params.t_from, params.t_to, params.fields, params.limit, params.cursor
    )
    if params.format != "json":
        if not session.principal.can(Permission.export):
            raise ApiError(403, "forbidden", f"role '{session.principal.role}' lacks permission 'export'")
        if precheck:
            await precheck()
        # Its own short-lived connection, not the pool's: a client reading slowly holds this one (and its
        # snapshot) only, never a pooled connection other requests wait for. Closed when the stream ends.
        conn = await psycopg.AsyncConnection.connect(state.api_database_url)
        try:
            await assume_api_role(conn)
            await set_org_scope(conn, session.principal.org_id)
            columns, types, chunks = await repository.stream_rows(state, conn, query)
        except BaseException:
            await conn.close()
            raise
        if params.format == "csv":
            encoded = exports.csv_bytes(columns, chunks)
        elif params.format == "parquet":
            encoded = exports.parquet_bytes(columns, types, chunks)
        else:
            encoded = exports.xlsx_bytes(columns, chunks)
        body = _closing(encoded, conn)
        filename = f"{dataset.key}.{params.format}"
        return StreamingResponse(
            body,
            media_type=exports.MEDIA_TYPES[params.format],
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    cache = state.cache
    key = None
    if cache is not None and dataset.date_col and params.t_from and params.t_to:
        key = cache.key_for(
            session.principal.org_id,
            *request_target(request.scope),
            dataset.table,
            params.t_from,
            params.t_to,
        )
        body = cache.get(key)
        if body is not None:
            if state.metrics:
                state.metrics.cache_hits.inc()
            return Response(body, media_type="application/json", headers={"X-Cache": "hit"})
    if precheck:
        await precheck()
    page = await repository.fetch_page(state, await session.conn(), query)
    body = json.dumps(page, separators=(",", ":")).encode()
    if cache is not None and key is not None:
        cache.put(key, body, session.permission, route_template(request.scope, API_PREFIX))
    return Response(body, media_type="application/json", headers={"X-Cache": "miss" if key else "bypass"})
