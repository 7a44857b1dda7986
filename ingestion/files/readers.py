"""Readers that turn an accepted file into chunks of raw columns with their source row numbers.

One reader per format (delimited text, xlsx, JSON/JSON Lines, Parquet). Each finds the header (skipping
notes rows above it, merging two-row headers such as Excel merged cells), and yields `RawChunk`s whose
`row_numbers` are 1-based rows of the source file/sheet, plus rows that could not be split into the
header's columns (`malformed`, quarantined by the caller). Nothing here knows about canonical datasets.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# Arrow's CSV reader keeps a queue of decoded blocks: memory grows ~25x the block size, while small
# blocks parse as fast. Blocks stay small and are grouped into CHUNK_ROWS-row chunks for the builder.
CSV_BLOCK_BYTES = 1024 * 1024
CHUNK_ROWS = 200_000
SAMPLE_ROWS = 500
SNIFF_BYTES = 1024 * 1024
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_TEXT_LINE_BREAK = re.compile(r"\r\n|\r|\n")
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
    if not any(any(r) for r in rows):
        raise ValueError("no header row: the file holds no text (an empty file, or only a byte-order mark)")
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


def _first_quote(path: Path, start: int) -> int:
    """Byte offset of the first `"` at or after `start` (-1 if none).

    Read into one reused buffer and searched with memchr (~0.2 s per GB from the page cache). Not a memory
    map: the mapped pages of a whole 1 GB file would count in the process's resident memory.
    """
    buf = bytearray(4 * 1024 * 1024)
    with path.open("rb") as fh:
        fh.seek(start)
        pos = start
        while n := fh.readinto(buf):
            hit = buf.find(b'"', 0, n)
            if hit >= 0:
                return pos + hit
            pos += n
    return -1


def _line_end_offset(head: bytes, lines: int) -> int:
    """Byte offset just past the first `lines` line breaks of `head` (\\r\\n, \\n or a lone \\r)."""
    pos = 0
    for _ in range(lines):
        match = _LINE_BREAK.search(head, pos)
        if match is None:
            return len(head)
        pos = match.end()
    return pos


class DelimitedReader:
    """CSV/TSV/semicolon files of any size, streamed with Arrow's incremental CSV reader.

    Why pyarrow.csv.open_csv rather than chunked pandas: it decodes in fixed-size blocks straight into
    Arrow buffers (no per-chunk DataFrame/object-string copies), so memory stays bounded by the block size
    while the downstream parsing and the Delta write stay columnar. It runs with `use_threads=False` so
    the invalid-row handler reports physical row numbers: rows that do not fit the header (footers, notes)
    are quarantined with their exact row number and every later row keeps its true number.

    Row numbers are the file's line numbers: a record's number is the line it starts on. A quoted value
    may hold line breaks (a multi-line "notes" cell); such a record spans several lines. Files with a quote
    character below the header switch to the quote-aware block splitter (`newlines_in_values`) and count
    the line breaks inside each record; files without one (the bulk of big exports) keep the plain path,
    where a record is exactly one line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        self.encoding = detected_encoding(head)
        text = head.decode(self.encoding, errors="replace").lstrip("\ufeff")
        cut = len(head) == SNIFF_BYTES  # the last line or record may be cut
        lines = text.splitlines()
        if cut and lines:
            lines = lines[:-1]
        self.delimiter = detected_delimiter(lines[: SAMPLE_ROWS + 50])
        rows, line_ends = _sample_records(text, self.delimiter, cut, SAMPLE_ROWS + 50)
        self.header_index, self.header_rows, self.columns = header_layout([[c.strip() for c in r] for r in rows])
        # Arrow's skip_rows counts lines, not records: a header cell with a line break spans two.
        n_header = self.header_index + self.header_rows
        self.header_lines = line_ends[n_header - 1] if n_header else 0
        self.info = SourceInfo(
            "csv", self.encoding, self.delimiter, {None: self.header_index + 1}, {None: self.columns}
        )
        if self.encoding.replace("-", "").startswith(("utf16", "utf32")):
            self.quoted_anywhere = self.quoted_data = True  # no byte-level search in wide encodings
        else:
            first = _first_quote(path, 0)
            data_start = _line_end_offset(head, self.header_lines)
            self.quoted_anywhere = first >= 0
            self.quoted_data = first >= data_start or (first >= 0 and _first_quote(path, data_start) >= 0)

    def chunks(self, block_bytes: int = CSV_BLOCK_BYTES, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        skipped: list[tuple[int, str, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            reason = f"row has {row.actual_columns} fields, header has {row.expected_columns}"
            skipped.append((int(row.number or 0), row.text, reason))
            return "skip"

        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(
                encoding=self.encoding,
                skip_rows=self.header_lines,
                column_names=self.columns,
                block_size=block_bytes,
                use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter,
                invalid_row_handler=on_invalid,
                ignore_empty_lines=False,
                newlines_in_values=self.quoted_anywhere,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False
            ),
        )
        # Arrow numbers the skipped lines one by one, then records: `next_row` is a record number and
        # `extra_lines` the line breaks inside earlier records (only quoted values can hold them).
        next_row = self.header_lines + 1
        extra_lines = 0
        pending: list[tuple[int, str, str]] = []
        group: list[tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, str]]]] = []
        try:
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
                if self.quoted_data:
                    rows, mine, extra_lines = _starting_lines(batch, rows, mine, extra_lines)
                group.append((batch, rows, mine))
                if sum(b.num_rows for b, _, _ in group) >= chunk_rows:
                    yield self._grouped(group)
                    group = []
        except pa.ArrowInvalid as exc:
            if "straddling" in str(exc) or "out of sync" in str(exc):
                raise ValueError(
                    f"a quoted value near line {next_row + extra_lines} is never closed or longer than "
                    f"{block_bytes:,} bytes (unbalanced quote character?)"
                ) from exc
            raise
        if group:
            yield self._grouped(group)
        pending.extend(skipped)
        tail = [b for b in pending if b[1].strip(self.delimiter + " \t\r")]
        if tail:
            if self.quoted_data:
                _, tail, _ = _starting_lines(None, np.array([], np.int64), tail, extra_lines)
            yield RawChunk(
                None,
                pa.table({c: pa.array([], pa.string()) for c in self.columns}),
                np.array([], np.int64),
                tail,
            )

    def _grouped(self, group: list[tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, str]]]]) -> RawChunk:
        table = pa.Table.from_batches([b for b, _, _ in group])
        assert table.num_columns == len(self.columns)
        return RawChunk(None, table, np.concatenate([r for _, r, _ in group]), [m for _, _, ms in group for m in ms])


def _sample_records(text: str, delimiter: str, cut: bool, limit: int) -> tuple[list[list[str]], list[int]]:
    """The first `limit` records of a text sample (quoted line breaks kept) and the line each one ends on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[list[str]] = []
    ends: list[int] = []
    try:
        for row in reader:
            rows.append(row)
            ends.append(reader.line_num)
            if len(rows) > limit:
                break
    except csv.Error as exc:
        raise ValueError(f"unreadable delimited text near line {reader.line_num + 1}: {exc}") from exc
    if cut or len(rows) > limit:
        rows, ends = rows[:-1], ends[:-1]  # the last record may be cut by the sample's end
    return rows, ends


def _line_breaks(values: pa.Array) -> np.ndarray | None:
    """Line breaks inside each value, or None when there are none (the usual case: one byte scan)."""
    _, offsets_buf, data_buf = values.buffers()
    if data_buf is None:
        return None
    offsets = np.frombuffer(offsets_buf, np.int32, count=len(values) + 1, offset=values.offset * 4)
    data = np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]]
    if not (np.count_nonzero(data == 10) or np.count_nonzero(data == 13)):
        return None
    return pc.count_substring_regex(values, r"\r\n|\r|\n").to_numpy(zero_copy_only=False).astype(np.int64)


def _starting_lines(
    batch: pa.RecordBatch | None,
    rows: np.ndarray,
    bad: list[tuple[int, str, str]],
    extra: int,
) -> tuple[np.ndarray, list[tuple[int, str, str]], int]:
    """Record numbers -> the lines the records start on, given `extra` line breaks inside earlier records.

    Data rows and malformed rows are merged in record order; each record moves every later one down by the
    line breaks inside its own values. Returns (data rows, malformed rows, line breaks so far).
    """
    inner = np.zeros(len(rows), np.int64)
    if batch is not None and len(rows):
        for col in batch.columns:
            breaks = _line_breaks(col)
            if breaks is not None:
                inner += breaks
    bad_inner = np.array([len(_TEXT_LINE_BREAK.findall(text)) for _, text, _ in bad], np.int64)
    records = np.concatenate([rows, np.array([b[0] for b in bad], np.int64)])
    breaks = np.concatenate([inner, bad_inner])
    order = np.argsort(records, kind="stable")
    before = np.empty_like(breaks)
    before[order] = np.cumsum(breaks[order]) - breaks[order] + extra
    lines = records + before
    k = len(rows)
    moved = [(int(lines[k + i]), text, why) for i, (_, text, why) in enumerate(bad)]
    return lines[:k], moved, extra + int(breaks.sum())


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


# What a damaged workbook raises while its sheets are being streamed (zip, inflate or XML errors).
_WORKBOOK_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, KeyError)


class ExcelReader:
    """xlsx workbooks, every non-empty sheet, streamed row by row (openpyxl read-only mode).

    Formulas are never executed: cached values are read (data_only) and a formula cell without a cached
    value makes its row malformed, with the reason. A second read-only pass over the same sheet, in step
    with the first, supplies the formulas. Only the first rows of each sheet are held (header detection);
    data rows are yielded in chunks of `chunk_rows`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = SourceInfo("xlsx")
        # Per sheet: (leading empty rows, (header index, header rows, columns)).
        self.layouts: dict[str, tuple[int, tuple[int, int, list[str]]]] = {}
        with contextlib.ExitStack() as stack:
            for ws in self._workbook(stack, data_only=True).worksheets:
                rows = (_row_texts(r) for r in ws.iter_rows(values_only=True))
                leading = 0
                head: list[list[str]] = []
                for row in rows:
                    if not head and not any(row):
                        leading += 1  # blank rows above the table do not count against the sample
                        continue
                    head.append(row)
                    if len(head) >= SAMPLE_ROWS + 50:
                        break
                if not head:
                    continue
                layout = header_layout(head)
                self.layouts[ws.title] = (leading, layout)
                self.info.header_row[ws.title] = leading + layout[0] + 1
                self.info.columns[ws.title] = layout[2]

    def _workbook(self, stack: contextlib.ExitStack, *, data_only: bool) -> Any:
        from openpyxl import load_workbook

        # File objects, not paths: openpyxl judges paths by extension and stored uploads have none.
        try:
            wb = load_workbook(stack.enter_context(self.path.open("rb")), read_only=True, data_only=data_only)
        except _WORKBOOK_ERRORS as exc:
            raise ValueError(f"unreadable workbook: {type(exc).__name__}: {exc}") from exc
        stack.callback(wb.close)
        for ws in wb.worksheets:
            # A stored dimension (even a bogus A1:XFD1048576) would pad every row: read cells as they are.
            if hasattr(ws, "reset_dimensions"):
                ws.reset_dimensions()
        return wb

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        for name in self.layouts:
            yield from self.sheet_chunks(name, chunk_rows)

    def sheet_chunks(self, name: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        """One sheet's data rows in chunks (at least one chunk per sheet, possibly empty)."""
        leading, (header, n_header, columns) = self.layouts[name]
        first_data = leading + header + n_header  # 0-based index of the first row below the header
        with contextlib.ExitStack() as stack:
            values_ws = self._workbook(stack, data_only=True)[name]
            formulas_ws = self._workbook(stack, data_only=False)[name]
            pairs = itertools.zip_longest(
                values_ws.iter_rows(values_only=True), formulas_ws.iter_rows(values_only=True), fillvalue=()
            )
            cols: list[list[str]] = [[] for _ in columns]
            numbers: list[int] = []
            malformed: list[tuple[int, str, str]] = []
            idx = -1
            try:
                for idx, (vrow, frow) in enumerate(pairs):
                    if idx < first_data:
                        continue
                    row = _row_texts(vrow)
                    if not any(row):
                        continue
                    problem = _excel_row_problem(row, list(frow), columns)
                    if problem:
                        malformed.append((idx + 1, *problem))
                    else:
                        for i in range(len(columns)):
                            cols[i].append(row[i] if i < len(row) else "")
                        numbers.append(idx + 1)
                    if len(numbers) + len(malformed) >= chunk_rows:
                        yield _excel_chunk(name, columns, cols, numbers, malformed)
                        cols, numbers, malformed = [[] for _ in columns], [], []
            except _WORKBOOK_ERRORS as exc:
                raise ValueError(
                    f"unreadable workbook sheet {name!r} after row {idx + 1}: {type(exc).__name__}: {exc}"
                ) from exc
            yield _excel_chunk(name, columns, cols, numbers, malformed)


def _row_texts(row: tuple[object, ...]) -> list[str]:
    return [_cell_text(v) for v in row]


def _excel_row_problem(row: list[str], frow: list[object], columns: list[str]) -> tuple[str, str] | None:
    """(raw text, reason) when a sheet row cannot be read as a record: lost formulas, cells past the header."""

    def name(i: int) -> str:
        return columns[i] if i < len(columns) else f"column {i + 1}"

    empty = [i >= len(row) or not row[i] for i in range(len(frow))]
    lost = [name(i) for i, f in enumerate(frow) if isinstance(f, str) and f.startswith("=") and empty[i]] + [
        name(i)
        for i, f in enumerate(frow)
        if f is not None and not isinstance(f, str | int | float | bool) and hasattr(f, "text") and empty[i]
    ]
    if lost:
        raw = "\t".join(str(f) if f is not None else "" for f in frow)
        return raw, f"formula without a cached value in {', '.join(lost)} (formulas are not executed)"
    if any(row[len(columns) :]):
        return "\t".join(row), f"row has values beyond the {len(columns)} header columns"
    return None


def _excel_chunk(
    sheet: str, columns: list[str], cols: list[list[str]], numbers: list[int], malformed: list[tuple[int, str, str]]
) -> RawChunk:
    table = pa.table({c: pa.array(v, pa.string()) for c, v in zip(columns, cols, strict=True)})
    return RawChunk(sheet, table, np.array(numbers, np.int64), malformed)


# --- JSON -----------------------------------------------------------------------------------------


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


# Distinct keys a JSON upload may bring; a record that would pass it is quarantined (a file whose every
# record invents new keys is not a table, and each column costs every later chunk a full-width array).
MAX_JSON_COLUMNS = 1000
# A document that is neither an array of records nor an object wrapping one is parsed as one value.
MAX_WHOLE_JSON_BYTES = 16 * 1024 * 1024


def _records_table(records: list[dict], columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([_json_text(r.get(c)) for r in records], pa.string()) for c in columns})


class JsonReader:
    """JSON arrays of records, objects wrapping one records array ({"data": [...]}), and JSON Lines.

    Arrays are streamed with ijson (its C backend): records are decoded one at a time and yielded in
    chunks, so a large array never sits in memory as one document. Row numbers are 1-based positions in
    the records array (lines for JSON Lines).
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.info = SourceInfo(fmt, "utf-8")
        self.prefix = self._records_prefix() if fmt == "json" else None
        sample: list[dict] = []
        records = self._records()
        try:
            for _, rec, _ in records:
                if isinstance(rec, dict):
                    sample.append(rec)
                if len(sample) >= SAMPLE_ROWS:
                    break
        finally:
            records.close()
        cols: dict[str, None] = {}
        for rec in sample:
            cols.update(dict.fromkeys(rec))
        self.columns = list(cols)
        self.info.columns[None] = self.columns
        self.info.header_row[None] = 0

    def _records_prefix(self) -> str:
        """Where the records are: "item" (a top-level array), "<key>.item" (an object wrapping exactly one
        array) or "" (any other object: the document itself is the one record).

        A top-level array is known from the first token; a wrapper object costs one streaming pass, since
        only the whole document tells whether it wraps one array or several (taking the first would drop
        the others without a word)."""
        import ijson

        arrays: list[str] = []
        with self.path.open("rb") as fh:
            try:
                key = None
                for prefix, event, value in ijson.parse(fh):
                    if prefix == "" and event == "start_array":
                        return "item"
                    if prefix == "" and event == "map_key":
                        key = value
                    elif event == "start_array" and prefix and "." not in prefix and prefix == key:
                        arrays.append(key)
            except ijson.JSONError as exc:
                raise ValueError(f"invalid JSON: {exc}") from exc
        # A key with dots cannot be addressed by an ijson prefix; such documents are read whole.
        return f"{arrays[0]}.item" if len(arrays) == 1 and "." not in arrays[0] else ""

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
        import ijson

        n = 0
        if not self.prefix and self.path.stat().st_size > MAX_WHOLE_JSON_BYTES:
            raise ValueError(
                f"a JSON document that is not an array of records (or an object wrapping one array) may be at "
                f"most {MAX_WHOLE_JSON_BYTES} bytes; send an array or JSON Lines"
            )
        with self.path.open("rb") as fh:
            if fh.read(3) != b"\xef\xbb\xbf":
                fh.seek(0)
            try:
                for n, rec in enumerate(ijson.items(fh, self.prefix or "", use_float=True), start=1):
                    yield n, rec, None
            except ijson.JSONError as exc:
                raise ValueError(f"invalid JSON after record {n}: {exc}") from exc

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        records: list[dict] = []
        numbers: list[int] = []
        malformed: list[tuple[int, str, str]] = []
        known = set(self.columns)
        for n, rec, line in self._records():
            if isinstance(rec, dict):
                extra = rec.keys() - known  # linear in the record, never in the columns seen so far
                if extra and len(known) + len(extra) > MAX_JSON_COLUMNS:
                    text, _, _ = (line or json.dumps(rec)[:10_000]).partition("\x00")
                    malformed.append(
                        (n, text, f"record brings columns beyond the limit of {MAX_JSON_COLUMNS} distinct keys")
                    )
                else:
                    records.append(rec)
                    numbers.append(n)
                    if extra:
                        self.columns.extend(sorted(extra))
                        known.update(extra)
            else:
                text, _, why = (line or json.dumps(rec)).partition("\x00")
                malformed.append((n, text, why or "record is not a JSON object"))
            if len(records) + len(malformed) >= chunk_rows:
                yield RawChunk(None, _records_table(records, self.columns), np.array(numbers, np.int64), malformed)
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


def sample_tables(reader: Reader) -> dict[str | None, pa.Table]:
    """Per sheet: the first rows, for detection (only the first chunk of each sheet is read)."""
    if isinstance(reader, DelimitedReader):
        chunks: Iterator[RawChunk] = reader.chunks(block_bytes=256 * 1024, chunk_rows=SAMPLE_ROWS)
    elif isinstance(reader, ExcelReader):
        return {
            name: next(reader.sheet_chunks(name, SAMPLE_ROWS)).table.slice(0, SAMPLE_ROWS) for name in reader.layouts
        }
    elif isinstance(reader, JsonReader):
        chunks = reader.chunks(chunk_rows=SAMPLE_ROWS)
    else:
        chunks = reader.chunks()
    for chunk in chunks:
        return {chunk.sheet: chunk.table.slice(0, SAMPLE_ROWS)}
    return {}


def raw_text(table: pa.Table, index: int, delimiter: str = ",") -> str:
    """One row rebuilt as delimited text, for the quarantine."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(
        ["" if v is None else str(v) for v in table.slice(index, 1).to_pylist()[0].values()]
    )
    return buf.getvalue()
