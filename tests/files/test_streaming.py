"""The big-file path on a small file: many tiny CSV chunks must keep exact row numbers around malformed
rows and find duplicate keys across chunk boundaries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ingestion.files.mapping import Mapping
from ingestion.files.readers import DelimitedReader
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
