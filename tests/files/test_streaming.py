"""The big-file path on a small file: many tiny CSV chunks must keep exact row numbers around malformed
rows and find duplicate keys across chunk boundaries."""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ingestion.files.mapping import Mapping
from ingestion.files.readers import DelimitedReader, ExcelReader, JsonReader
from ingestion.files.service import _read_ahead
from ingestion.files.transform import CanonicalBuilder, KeySet


def _file(tmp_path: Path) -> Path:
    lines = ["ts,zone,load"]
    for i in range(400):
        lines.append(f"2024-01-01 00:00,Z{i:03d},{i}")
        if i == 150:
            lines.append("garbage line without commas")  # row 153
        if i == 300:
            lines.append("")  # row 304: blank, not a row
    lines.append("2024-01-01 00:00,Z007,1")  # duplicate of the row for Z007, far away (other chunk)
    path = tmp_path / "load_many.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_row_numbers_stay_exact_across_tiny_chunks_and_malformed_rows(tmp_path):
    reader = DelimitedReader(_file(tmp_path))
    chunks = list(reader.chunks(block_bytes=512, chunk_rows=7))
    assert len(chunks) > 20
    numbers = np.concatenate([c.row_numbers for c in chunks])
    malformed = [m for c in chunks for m in c.malformed]
    assert malformed == [(153, "garbage line without commas", "row has 1 fields, header has 3")]
    zones = [z for c in chunks for z in c.table.column("zone").to_pylist()]
    by_row = dict(zip(numbers.tolist(), zones, strict=True))
    # The garbage line (153) and the blank line (304, an all-empty row the builder drops) shift the rows.
    expected = {i + 2 if i <= 150 else i + 3 if i <= 300 else i + 4: f"Z{i:03d}" for i in range(400)}
    assert {n: z for n, z in by_row.items() if z and n != 404} == expected
    assert by_row[304] == "" and by_row[404] == "Z007"
    assert numbers[-1] == 404


def test_duplicates_found_across_chunks(tmp_path):
    reader = DelimitedReader(_file(tmp_path))
    mapping = Mapping(
        "load", columns={"ts_utc": "ts", "zone": "zone", "load_mw": "load"}, ts_format="%Y-%m-%d %H:%M"
    )
    builder = CanonicalBuilder(
        mapping, upload_id=1, file_name="f", org_id="o", batch_id="b", ingested_at=datetime.now(UTC)
    )
    landed_rows, quarantined = [], []
    for chunk in reader.chunks(block_bytes=512, chunk_rows=7):
        table, q = builder.build(chunk)
        landed_rows += table.column("_row_number").to_pylist()
        quarantined += [(r.row_number, r.reason) for r in q]
    assert len(landed_rows) == 400
    assert quarantined[0] == (153, "row has 1 fields, header has 3")
    assert quarantined[1][0] == 404 and quarantined[1][1].startswith("duplicate key ts_utc, zone")
    assert builder.rows_read == builder.rows_landed + builder.rows_quarantined == 402


def test_keyset_is_exact_over_many_runs():
    rng = np.random.default_rng(1)
    keys = KeySet()
    seen: set[int] = set()
    for _ in range(50):
        batch = np.unique(rng.integers(0, 5000, 300).astype(np.uint64))
        hit = keys.seen(batch)
        assert hit.tolist() == [int(k) in seen for k in batch]
        keys.add(batch[~hit])
        seen.update(int(k) for k in batch)
    assert sum(len(r) for r in keys.runs) == len(seen)


def _notes_file(tmp_path: Path) -> tuple[Path, dict[int, str], dict[int, str]]:
    """Records with multi-line quoted notes, a malformed multi-line record and blank lines, with the line
    each record starts on."""
    lines = ['"ts","zone","load","notes"']
    expected: dict[int, str] = {}
    bad: dict[int, str] = {}
    for i in range(120):
        start = sum(line.count("\n") + 1 for line in lines) + 1
        if i % 5 == 2:
            lines.append(f'2024-01-01 00:00,Z{i:03d},{i},"first\n""second""\n\nfourth"')
        elif i == 61:
            lines.append(f'2024-01-01 00:00,Z{i:03d},{i},"a\nb",surplus')
            bad[start] = f'2024-01-01 00:00,Z{i:03d},{i},"a\nb",surplus'
            continue
        else:
            lines.append(f"2024-01-01 00:00,Z{i:03d},{i},plain")
        expected[start] = f"Z{i:03d}"
        if i == 90:
            lines.append("")
    path = tmp_path / "notes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, expected, bad


def test_quoted_line_breaks_keep_exact_starting_lines_across_tiny_blocks(tmp_path):
    path, expected, bad = _notes_file(tmp_path)
    reader = DelimitedReader(path)
    assert (reader.quoted_anywhere, reader.quoted_data) == (True, True)
    chunks = list(reader.chunks(block_bytes=256, chunk_rows=7))
    assert len(chunks) > 10
    numbers = np.concatenate([c.row_numbers for c in chunks]).tolist()
    zones = [z for c in chunks for z in c.table.column("zone").to_pylist()]
    assert {n: z for n, z in zip(numbers, zones, strict=True) if z} == expected
    assert [(n, text) for c in chunks for n, text, _ in c.malformed] == list(bad.items())
    notes = [v for c in chunks for v in c.table.column("notes").to_pylist() if v != "plain" and v]
    assert set(notes) == {'first\n"second"\n\nfourth'}


def test_plain_files_keep_the_fast_path(tmp_path):
    plain = _file(tmp_path)
    assert (DelimitedReader(plain).quoted_anywhere, DelimitedReader(plain).quoted_data) == (False, False)
    quoted_header = tmp_path / "quoted_header.csv"
    quoted_header.write_text('"ts","zone","load"\n2024-01-01 00:00,Z1,1\n')
    assert (DelimitedReader(quoted_header).quoted_anywhere, DelimitedReader(quoted_header).quoted_data) == (
        True,
        False,
    )


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("wrapped", [False, True])
def test_json_arrays_are_streamed_in_chunks(tmp_path, wrapped):
    records = [{"time": f"2024-01-01T{i % 24:02d}:00:00Z", "zone": f"Z{i:05d}", "load": i} for i in range(6000)]
    path = tmp_path / "load.json"
    path.write_text(json.dumps({"meta": {"source": "tso", "tags": [1]}, "data": records} if wrapped else records))
    reader = JsonReader(path, "json")
    assert reader.columns == ["time", "zone", "load"]
    chunks = reader.chunks(chunk_rows=500)
    first = next(chunks)
    assert first.row_numbers.tolist() == list(range(1, 501))
    assert first.table.column("zone").to_pylist() == [f"Z{i:05d}" for i in range(500)]
    # The rest of the array has not been read yet: cutting the file now breaks the records still to come.
    _truncate(path)
    with pytest.raises(ValueError, match="invalid JSON after record"):
        for chunk in chunks:
            assert chunk.table.num_rows <= 500


def test_xlsx_sheets_are_streamed_in_chunks(tmp_path):
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Load")
    ws.append(["Timestamp", "Zone", "Load (MW)"])
    for i in range(6_000):
        ws.append([datetime(2024, 1, 1, i % 24), f"Z{i:05d}", float(i)])
    path = tmp_path / "load.xlsx"
    wb.save(path)
    reader = ExcelReader(path)
    assert reader.info.columns == {"Load": ["Timestamp", "Zone", "Load (MW)"]}
    chunks = reader.chunks(chunk_rows=500)
    first = next(chunks)
    assert first.row_numbers.tolist() == list(range(2, 502))
    assert first.table.column("Zone").to_pylist()[-1] == "Z00499"
    second = next(chunks)
    assert second.row_numbers.tolist() == list(range(502, 1002))
    # Rows are read as they are consumed: cutting the workbook now breaks the rows still to come.
    _truncate(path)
    with pytest.raises(ValueError, match="unreadable workbook sheet 'Load'"):
        for chunk in chunks:
            assert chunk.table.num_rows <= 500


@pytest.mark.parametrize(
    "content", [b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n\r\n", b" \n"], ids=["bom", "bom_blank_lines", "blank"]
)
def test_a_file_with_no_text_is_refused_with_a_reason_not_a_crash(tmp_path, content):
    """Found by the API's stateful schemathesis run: an upload of only a byte-order mark answered 500."""
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="no header row"):
        DelimitedReader(path)


def test_keyset_is_exact_when_batches_come_in_key_order():
    """Keys lead with the time, so a time-ordered file's batches lie above every earlier run; a batch that
    repeats the last key of the one before, or the very first key, is still caught."""
    keys = KeySet()
    seen: set[int] = set()
    first = 10_000
    for i in range(40):
        batch = np.arange(first + 100 * i, first + 100 * i + 100, dtype=np.uint64)
        if i % 7 == 3:
            batch = np.unique(np.append(batch, [batch[0] - 1, first]).astype(np.uint64))
        hit = keys.seen(batch)
        assert hit.tolist() == [int(k) in seen for k in batch]
        keys.add(batch[~hit])
        seen.update(int(k) for k in batch)
    assert sum(len(r) for r in keys.runs) == len(seen)


def test_read_ahead_keeps_order_raises_the_producers_error_and_stops_when_closed():
    assert list(_read_ahead(iter(range(1000)), 3)) == list(range(1000))

    def failing():
        yield 1
        raise ValueError("broken after the sample")

    got = []
    with pytest.raises(ValueError, match="broken after the sample"):
        for item in _read_ahead(failing(), 2):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    # Checked by the producer's own name: the session's other fixtures may start or end threads meanwhile.
    with contextlib.closing(_read_ahead(endless(), 2, "test-read-ahead")) as items:
        assert [next(items) for _ in range(5)] == list(range(5))
        assert any(t.name == "test-read-ahead" for t in threading.enumerate())
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate()), "closing stops the producing thread"
    assert len(produced) <= 5 + 2 + 1, "the producer runs at most `depth` items ahead"


def _fall_back_prices(tmp_path: Path) -> Path:
    """Berlin local prices over the 2024 fall-back night (02:00 listed twice per zone), with a blank row, a bad
    number, a malformed line and a repeated key, for chunks of a few rows."""
    lines = ["ts,zone,price"]
    for zone in ("Z1", "Z2"):
        for hour in ("00", "01", "02", "02", "03", "04"):
            lines.append(f"2024-10-27 {hour}:00,{zone},{40 + len(lines)}")
    lines[5] = "2024-10-27 03:00,Z1,twelve"  # not a number
    lines.insert(8, "")
    lines.insert(11, "garbage without commas")
    lines.append("2024-10-27 00:00,Z1,99")  # the first row's key again
    path = tmp_path / "fall_back_prices.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parsing_ahead_on_another_thread_builds_what_building_in_order_builds(tmp_path):
    mapping = Mapping(
        "prices",
        columns={"ts_utc": "ts", "zone": "zone", "price": "price"},
        constants={"market": "DA", "currency": "EUR"},
        timezone="Europe/Berlin",
        ts_format="%Y-%m-%d %H:%M",
    )

    def builder() -> CanonicalBuilder:
        return CanonicalBuilder(
            mapping, upload_id=1, file_name="f", org_id="o", batch_id="b", ingested_at=datetime(2024, 11, 1, tzinfo=UTC)
        )

    def chunks() -> list:
        return list(DelimitedReader(_fall_back_prices(tmp_path)).chunks(block_bytes=64, chunk_rows=3))

    in_order = builder()
    assert in_order.parses_ahead
    expected = [in_order.build(chunk) for chunk in chunks()]

    ahead = builder()
    with ThreadPoolExecutor(1) as parser:  # every chunk parsed before the first is built
        parsed = [parser.submit(ahead.parse, chunk) for chunk in chunks()]
        got = [ahead.build(p.result()) for p in parsed]

    assert len(got) == len(expected) >= 4
    for (table, quarantine), (want_table, want_quarantine) in zip(got, expected, strict=True):
        assert table.equals(want_table)
        assert quarantine == want_quarantine
    landed = pa.concat_tables([table for table, _ in got])
    # 02:00 local twice: CEST (00:00 UTC) first, then CET (01:00 UTC); only the ordered part can tell them apart
    assert sorted(landed.filter(pc.equal(landed["zone"], "Z2"))["ts_utc"].to_pylist())[2:4] == [
        datetime(2024, 10, 27, 0, tzinfo=UTC),
        datetime(2024, 10, 27, 1, tzinfo=UTC),
    ]
    reasons = [q.reason for _, qs in got for q in qs]
    assert any(r.startswith("unparseable number in price") for r in reasons)
    assert any(r.startswith("duplicate key") for r in reasons)
    assert ahead.rows_read == in_order.rows_read == 14


def test_files_with_an_hour_column_are_not_parsed_ahead():
    mapping = Mapping("load", columns={"zone": "zone", "load_mw": "load"}, date_column="date", hour_column="hour")
    builder = CanonicalBuilder(
        mapping, upload_id=1, file_name="f", org_id="o", batch_id="b", ingested_at=datetime(2024, 11, 1, tzinfo=UTC)
    )
    assert not builder.parses_ahead  # a DST day cut by a chunk's end is held back for the next chunk
