"""Readers that turn an accepted file into chunks of raw columns with their source row numbers.

One reader per format (delimited text, xlsx, JSON/JSON Lines, Parquet). Each finds the header (skipping
notes rows above it, merging two-row headers such as Excel merged cells), and yields `RawChunk`s whose
`row_numbers` are 1-based rows of the source file/sheet, plus rows that could not be split into the
header's columns (`malformed`, quarantined by the caller). Nothing here knows about canonical datasets.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# Arrow's CSV reader keeps a queue of decoded blocks: memory grows ~25x the block size, while small
# blocks parse as fast. Blocks stay small and are grouped into CHUNK_ROWS-row chunks for the builder.
CSV_BLOCK_BYTES = 1024 * 1024
CHUNK_ROWS = 200_000
SAMPLE_ROWS = 500
_NUMERIC_OR_DATE = re.compile(r"^[\s\d.,:/\-+TZ%€$£₹]+$|^\d")


@dataclass
class RawChunk:
    """Raw columns of consecutive source rows, plus rows that did not fit the header."""

    sheet: str | None
    table: pa.Table
    row_numbers: np.ndarray
    malformed: list[tuple[int, str, str]] = field(default_factory=list)  # (row number, raw text, reason)


@dataclass
class SourceInfo:
    """What the reader found out about the file (reported in the upload's detected schema)."""

    format: str
    encoding: str | None = None
    delimiter: str | None = None
    header_row: dict[str | None, int] = field(default_factory=dict)
    columns: dict[str | None, list[str]] = field(default_factory=dict)


def _cell_is_texty(value: str) -> bool:
    return bool(value) and not _NUMERIC_OR_DATE.match(value)


def header_layout(rows: list[list[str]]) -> tuple[int, int, list[str]]:
    """(index of the first header row, number of header rows, column names) of a sheet's first rows.

    Notes/title rows above the header are skipped (they fill fewer cells than the table is wide). A
    sparse text row directly above a full text row is a merged group header ("Price (€/MWh)" over
    "DA | RT"): it is forward-filled and prefixed to the names below.
    """
    filled = [sum(1 for c in r if c) for r in rows]
    widths = [max((i + 1 for i, c in enumerate(r) if c), default=0) for r in rows]
    data_widths = [w for w in widths if w >= 2] or [max(widths, default=1)]
    width = max(set(data_widths), key=data_widths.count)
    header = 0
    for i, r in enumerate(rows):
        texty = sum(_cell_is_texty(c) for c in r if c)
        if filled[i] >= max(1, (width + 1) // 2) and texty * 2 >= filled[i]:
            header = i
            break
    n_rows = 1
    below = rows[header + 1] if header + 1 < len(rows) else []
    upper = rows[header] + [""] * max(0, len(below) - len(rows[header]))
    if (
        filled[header] < width
        and any(below)
        and all(_cell_is_texty(c) for c in below if c)
        and any(b and not a for a, b in zip(upper, below, strict=False))
    ):
        header += 1  # the sparse row found first is the group row above the real header
    if header > 0:
        above = rows[header - 1]
        if (
            0 < filled[header - 1] <= filled[header]
            and all(_cell_is_texty(c) for c in above if c)
            and widths[header - 1] <= widths[header]
            # A group label spans columns: it starts after column A, or a label above a blank
            # (vertically merged) cell of the row below.
            and (not above[0] or any(a and not b for a, b in zip(above, rows[header], strict=False)))
        ):
            header, n_rows = header - 1, 2
    names_row = rows[header + n_rows - 1]
    count = max(len(names_row), width)
    names: list[str] = []
    group = ""
    for i in range(count):
        name = names_row[i].strip() if i < len(names_row) else ""
        if n_rows == 2:
            upper = rows[header][i].strip() if i < len(rows[header]) else ""
            group = upper or group
            name = f"{group} {name}".strip() if name else group
        names.append(name)
    return header, n_rows, unique_names(names)


def unique_names(names: list[str]) -> list[str]:
    """Column names made non-empty and unique (blank -> column_N, repeats -> name_2)."""
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(names):
        n = n or f"column_{i + 1}"
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 1
        out.append(n)
    return out


# --- delimited text -------------------------------------------------------------------------------


def detected_encoding(head: bytes) -> str:
    """Encoding of a text file from its first bytes: BOMs first, then strict UTF-8, then a detector."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8"  # Arrow skips the BOM itself
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a multi-byte character cut by the sample boundary
            return "utf-8"
    # Market files that are not UTF-8 are overwhelmingly Western single-byte exports (Excel "CSV" on
    # Windows): cp1252 — a superset of printable Latin-1 that has € — when it decodes cleanly. Detectors
    # guess wildly on short samples (Latin-1 umlauts read as Big5), so they only get the rest.
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(head).best()
    return (best.encoding if best else "latin-1").lower()


def detected_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the sample lines into the most consistent number of fields (> 1)."""
    best, best_score = ",", -1.0
    for delim in (",", ";", "\t", "|"):
        counts = [len(r) for r in csv.reader(lines, delimiter=delim) if r]
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        score = counts.count(mode) / len(counts) + mode / 1000
        if score > best_score:
            best, best_score = delim, score
    return best


class DelimitedReader:
    """CSV/TSV/semicolon files of any size, streamed with Arrow's incremental CSV reader.

    Why pyarrow.csv.open_csv rather than chunked pandas: it decodes in fixed-size blocks straight into
    Arrow buffers (no per-chunk DataFrame/object-string copies), so memory stays bounded by the block size
    while the downstream parsing and the Delta write stay columnar. It runs with `use_threads=False` so
    the invalid-row handler reports physical row numbers: rows that do not fit the header (footers, notes)
    are quarantined with their exact row number and every later row keeps its true number.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            head = fh.read(1024 * 1024)
        self.encoding = detected_encoding(head)
        text = head.decode(self.encoding, errors="replace").lstrip("\ufeff")
        lines = text.splitlines()
        if len(head) == 1024 * 1024 and lines:
            lines = lines[:-1]  # the last line may be cut
        lines = lines[: SAMPLE_ROWS + 50]
        self.delimiter = detected_delimiter(lines)
        rows = list(csv.reader(lines, delimiter=self.delimiter))
        self.header_index, self.header_rows, self.columns = header_layout(
            [[c.strip() for c in r] for r in rows]
        )
        self.info = SourceInfo(
            "csv", self.encoding, self.delimiter, {None: self.header_index + 1}, {None: self.columns}
        )

    def chunks(self, block_bytes: int = CSV_BLOCK_BYTES, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        skipped: list[tuple[int, str, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            reason = f"row has {row.actual_columns} fields, header has {row.expected_columns}"
            skipped.append((int(row.number or 0), row.text, reason))
            return "skip"

        first_data_row = self.header_index + self.header_rows + 1
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(
                encoding=self.encoding,
                skip_rows=self.header_index + self.header_rows,
                column_names=self.columns,
                block_size=block_bytes,
                use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False
            ),
        )
        next_row = first_data_row
        pending: list[tuple[int, str, str]] = []
        group: list[tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, str]]]] = []
        for batch in reader:
            pending.extend(skipped)
            skipped.clear()
            pending.sort()
            n = batch.num_rows
            rows = np.arange(next_row, next_row + n, dtype=np.int64)
            mine: list[tuple[int, str, str]] = []
            # Rows the handler skipped sit between data rows: every data row after one moves down.
            while pending and n and pending[0][0] <= rows[-1]:
                bad = pending.pop(0)
                rows[rows >= bad[0]] += 1
                if bad[1].strip(self.delimiter + " \t\r"):  # a blank line is not a row
                    mine.append(bad)
            if n:
                next_row = int(rows[-1]) + 1
            group.append((batch, rows, mine))
            if sum(b.num_rows for b, _, _ in group) >= chunk_rows:
                yield self._grouped(group)
                group = []
        if group:
            yield self._grouped(group)
        pending.extend(skipped)
        tail = [b for b in pending if b[1].strip(self.delimiter + " \t\r")]
        if tail:
            yield RawChunk(
                None,
                pa.table({c: pa.array([], pa.string()) for c in self.columns}),
                np.array([], np.int64),
                tail,
            )

    def _grouped(
        self, group: list[tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, str]]]]
    ) -> RawChunk:
        table = pa.Table.from_batches([b for b, _, _ in group])
        assert table.num_columns == len(self.columns)
        return RawChunk(
            None, table, np.concatenate([r for _, r, _ in group]), [m for _, _, ms in group for m in ms]
        )


# --- Excel ----------------------------------------------------------------------------------------


def _cell_text(value: object) -> str:
    from datetime import date, datetime, time

    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value).strip()


class ExcelReader:
    """xlsx workbooks, every non-empty sheet. Formulas are never executed: cached values are read
    (data_only) and a formula cell without a cached value makes its row malformed, with the reason."""

    def __init__(self, path: Path) -> None:
        from openpyxl import load_workbook

        self.path = path
        # File objects, not paths: openpyxl judges paths by extension and stored uploads have none.
        values_wb = load_workbook(path.open("rb"), read_only=True, data_only=True)
        formulas_wb = load_workbook(path.open("rb"), read_only=True, data_only=False)
        self.sheets: dict[str, tuple[list[list[str]], list[list[object]]]] = {}
        for ws in values_wb.worksheets:
            fws = formulas_wb[ws.title]
            values = [[_cell_text(v) for v in row] for row in ws.iter_rows(min_row=1, values_only=True)]
            formulas = [list(row) for row in fws.iter_rows(min_row=1, values_only=True)]
            if any(any(r) for r in values):
                self.sheets[ws.title] = (values, formulas)
        values_wb.close()
        formulas_wb.close()
        self.info = SourceInfo("xlsx")
        self.layouts: dict[str, tuple[int, int, list[str]]] = {}
        for name, (values, _) in self.sheets.items():
            layout = header_layout(values[: SAMPLE_ROWS + 50])
            self.layouts[name] = layout
            self.info.header_row[name] = layout[0] + 1
            self.info.columns[name] = layout[2]

    def chunks(self) -> Iterator[RawChunk]:
        for name, (values, formulas) in self.sheets.items():
            header, n_header, columns = self.layouts[name]
            cols: list[list[str]] = [[] for _ in columns]
            numbers: list[int] = []
            malformed: list[tuple[int, str, str]] = []
            for idx in range(header + n_header, len(values)):
                row = values[idx]
                if not any(row):
                    continue
                frow = formulas[idx] if idx < len(formulas) else []
                lost = [
                    columns[i] if i < len(columns) else f"column {i + 1}"
                    for i, f in enumerate(frow)
                    if isinstance(f, str) and f.startswith("=") and (i >= len(row) or not row[i])
                ] + [
                    columns[i] if i < len(columns) else f"column {i + 1}"
                    for i, f in enumerate(frow)
                    if f is not None
                    and not isinstance(f, str | int | float | bool)
                    and hasattr(f, "text")
                    and (i >= len(row) or not row[i])
                ]
                if lost:
                    raw = "\t".join(str(f) if f is not None else "" for f in frow)
                    malformed.append(
                        (
                            idx + 1,
                            raw,
                            f"formula without a cached value in {', '.join(lost)} "
                            "(formulas are not executed)",
                        )
                    )
                    continue
                if len([c for c in row[len(columns) :] if c]):
                    malformed.append(
                        (idx + 1, "\t".join(row), f"row has values beyond the {len(columns)} header columns")
                    )
                    continue
                for i in range(len(columns)):
                    cols[i].append(row[i] if i < len(row) else "")
                numbers.append(idx + 1)
            table = pa.table({c: pa.array(v, pa.string()) for c, v in zip(columns, cols, strict=True)})
            yield RawChunk(name, table, np.array(numbers, np.int64), malformed)


# --- JSON -----------------------------------------------------------------------------------------


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _records_table(records: list[dict], columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([_json_text(r.get(c)) for r in records], pa.string()) for c in columns})


class JsonReader:
    """JSON arrays of records, objects wrapping one records array ({"data": [...]}), and JSON Lines."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.info = SourceInfo(fmt, "utf-8")
        sample: list[dict] = []
        for _, rec, _ in self._records():
            if isinstance(rec, dict):
                sample.append(rec)
            if len(sample) >= SAMPLE_ROWS:
                break
        cols: dict[str, None] = {}
        for rec in sample:
            cols.update(dict.fromkeys(rec))
        self.columns = list(cols)
        self.info.columns[None] = self.columns
        self.info.header_row[None] = 0

    def _records(self) -> Iterator[tuple[int, object, str | None]]:
        if self.format == "jsonl":
            with self.path.open("r", encoding="utf-8-sig", errors="replace") as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield n, json.loads(line), line
                    except json.JSONDecodeError as exc:
                        yield n, None, line.rstrip("\n") + f"\x00invalid JSON: {exc.msg}"
            return
        with self.path.open("r", encoding="utf-8-sig", errors="replace") as fh:
            doc = json.load(fh)
        if isinstance(doc, dict):
            arrays = [v for v in doc.values() if isinstance(v, list)]
            doc = arrays[0] if len(arrays) == 1 else [doc]
        for n, rec in enumerate(doc, start=1):
            yield n, rec, None

    def chunks(self) -> Iterator[RawChunk]:
        records: list[dict] = []
        numbers: list[int] = []
        malformed: list[tuple[int, str, str]] = []
        for n, rec, line in self._records():
            if isinstance(rec, dict):
                records.append(rec)
                numbers.append(n)
                extra = set(rec) - set(self.columns)
                if extra:
                    self.columns.extend(sorted(extra))
            else:
                text, _, why = (line or json.dumps(rec)).partition("\x00")
                malformed.append((n, text, why or "record is not a JSON object"))
            if len(records) >= CHUNK_ROWS:
                yield RawChunk(
                    None, _records_table(records, self.columns), np.array(numbers, np.int64), malformed
                )
                records, numbers, malformed = [], [], []
        yield RawChunk(None, _records_table(records, self.columns), np.array(numbers, np.int64), malformed)


# --- Parquet --------------------------------------------------------------------------------------


class ParquetReader:
    """Parquet files, read in row batches with their own types (timestamps stay timestamps)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path)
        self.columns = list(self.file.schema_arrow.names)
        self.info = SourceInfo("parquet", columns={None: self.columns}, header_row={None: 0})

    def chunks(self) -> Iterator[RawChunk]:
        start = 1
        for batch in self.file.iter_batches(batch_size=CHUNK_ROWS):
            n = batch.num_rows
            yield RawChunk(None, pa.Table.from_batches([batch]), np.arange(start, start + n, dtype=np.int64))
            start += n


Reader = DelimitedReader | ExcelReader | JsonReader | ParquetReader


def open_reader(path: Path, fmt: str) -> Reader:
    """The reader for a file whose format was detected from its content."""
    if fmt == "csv":
        return DelimitedReader(path)
    if fmt == "xlsx":
        return ExcelReader(path)
    if fmt in ("json", "jsonl"):
        return JsonReader(path, fmt)
    if fmt == "parquet":
        return ParquetReader(path)
    raise ValueError(f"no reader for format {fmt!r}")


def sample_tables(reader: Reader) -> dict[str | None, tuple[pa.Table, int]]:
    """Per sheet: the first rows (for detection) and the sheet's total row count when cheaply known."""
    out: dict[str | None, tuple[pa.Table, int]] = {}
    if isinstance(reader, DelimitedReader):
        for chunk in reader.chunks(block_bytes=256 * 1024, chunk_rows=SAMPLE_ROWS):
            out[None] = (chunk.table.slice(0, SAMPLE_ROWS), -1)
            break
        return out
    for chunk in reader.chunks():
        if chunk.sheet not in out:
            out[chunk.sheet] = (chunk.table.slice(0, SAMPLE_ROWS), chunk.table.num_rows)
        if isinstance(reader, JsonReader | ParquetReader):
            break
    return out


def raw_text(table: pa.Table, index: int, delimiter: str = ",") -> str:
    """One row rebuilt as delimited text, for the quarantine."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(
        ["" if v is None else str(v) for v in table.slice(index, 1).to_pylist()[0].values()]
    )
    return buf.getvalue()
