"""Streaming CSV, Parquet and Excel writers fed chunk by chunk from a server-side cursor.

Memory stays bounded by one chunk: CSV and Parquet bytes are yielded as each chunk is encoded (one Parquet
row group per chunk). Excel's zip container cannot be emitted incrementally by openpyxl, so the write-only
workbook spools to a temporary file on disk and is streamed from there.

Text cells that a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
return; OWASP "CSV injection") are prefixed with `'` in CSV and Excel, so an uploaded value such as
`=HYPERLINK(...)` is shown as text instead of being evaluated when an analyst opens the export. Numbers stay
numbers; Parquet is typed and never evaluated, so it is written unchanged. JSON and array columns (backtest
metrics, optimization inputs) are written as JSON text, which every tool can parse back.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Compressed containers already: the API's gzip layer passes them through unchanged.
ALREADY_COMPRESSED_EXPORTS = (MEDIA_TYPES["parquet"], MEDIA_TYPES["xlsx"])
XLSX_MAX_ROWS = 1_048_575  # data rows per sheet (one header row)


def export_openapi_content() -> dict[str, Any]:
    """OpenAPI `content` entries for the export media types."""
    return {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()}


async def csv_bytes(columns: list[str], chunks: AsyncIterator[list[tuple]]) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    yield buf.getvalue().encode()
    async for rows in chunks:
        buf.seek(0)
        buf.truncate()
        writer.writerows(_plain(r) for r in rows)
        yield buf.getvalue().encode()


def _arrow_type(pg_type: str) -> pa.DataType:
    if pg_type.startswith("timestamp with time zone"):
        return pa.timestamp("us", tz="UTC")
    if pg_type.startswith("timestamp"):
        return pa.timestamp("us")
    if pg_type == "date":
        return pa.date32()
    if pg_type in ("double precision", "real") or pg_type.startswith("numeric"):
        return pa.float64()
    if pg_type in ("bigint", "integer", "smallint"):
        return pa.int64()
    if pg_type == "boolean":
        return pa.bool_()
    return pa.string()


class _Sink(io.RawIOBase):
    """A write-only file that hands written bytes to the generator instead of keeping them."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.pending.extend(b)
        self.position += len(b)
        return len(b)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out


async def parquet_bytes(
    columns: list[str], types: dict[str, str], chunks: AsyncIterator[list[tuple]]
) -> AsyncIterator[bytes]:
    schema = pa.schema([pa.field(c, _arrow_type(types[c])) for c in columns])
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    async for rows in chunks:
        arrays = [
            pa.array([_arrow_value(r[i], schema.field(i).type) for r in rows], type=schema.field(i).type)
            for i in range(len(columns))
        ]
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        yield sink.take()
    writer.close()
    yield sink.take()


def _arrow_value(value: Any, arrow_type: pa.DataType) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if pa.types.is_string(arrow_type) and value is not None and not isinstance(value, str):
        return _json_text(value) if isinstance(value, list | dict) else str(value)
    return value


async def xlsx_bytes(columns: list[str], chunks: AsyncIterator[list[tuple]]) -> AsyncIterator[bytes]:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    sheet = wb.create_sheet("data")
    sheet.append([neutralized(c) for c in columns])
    rows_in_sheet = 0
    async for rows in chunks:
        for row in rows:
            if rows_in_sheet >= XLSX_MAX_ROWS:
                sheet = wb.create_sheet(f"data_{len(wb.worksheets) + 1}")
                sheet.append([neutralized(c) for c in columns])
                rows_in_sheet = 0
            sheet.append(_excel(row))
            rows_in_sheet += 1
    with tempfile.TemporaryFile() as tmp:
        await asyncio.to_thread(wb.save, tmp)
        tmp.seek(0)
        while block := tmp.read(1 << 16):
            yield block


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralized(value: str) -> str:
    """`value` as inert spreadsheet text: a leading formula character is escaped with `'`."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _plain(row: tuple) -> list[Any]:
    out = []
    for v in row:
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, list | dict):
            v = _json_text(v)
        if isinstance(v, str):
            v = neutralized(v)
        out.append(v)
    return out


def _excel(row: tuple) -> list[Any]:
    # Excel has no timezones: write UTC wall-clock times (the column names say *_utc).
    out = []
    for v in row:
        if isinstance(v, datetime) and v.tzinfo is not None:
            v = v.replace(tzinfo=None) if v.utcoffset() is None else (v - v.utcoffset()).replace(tzinfo=None)
        elif isinstance(v, Decimal):
            v = float(v)
        elif isinstance(v, list | dict):
            v = _json_text(v)
        if isinstance(v, str):
            v = neutralized(v)
        out.append(v)
    return out


def _json_text(value: list | dict) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
