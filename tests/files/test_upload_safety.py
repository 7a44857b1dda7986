"""Idempotency, exactly-once landing, hostile files and the landing-folder door."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra.db import connect
from ingestion.files import security
from ingestion.files.service import (
    ingest_landing_file,
    landing_files_by_org,
    process_upload,
    receive_upload,
    scan_landing_folder,
    upload_report,
)
from tests.files import corpus


def _rows_of(lake, upload_id: int) -> int:
    table = DeltaTable(lake.table_uri("bronze", "files__prices")).to_pyarrow_table(columns=["_upload_id"])
    return sum(1 for v in table.column("_upload_id").to_pylist() if v == upload_id)


def test_same_content_twice_is_a_duplicate_pointing_at_the_original(
    ingest, files_lake, files_database_url, tmp_path
):
    path = corpus.nodal_prices_csv(tmp_path, rows=200)
    first = ingest(path, org_id="org-dup")
    assert (first["status"], first["rows_landed"]) == ("landed", 200)
    copy = tmp_path / "renamed_copy.csv"
    copy.write_bytes(path.read_bytes())
    second = ingest(copy, org_id="org-dup")
    assert second["status"] == "duplicate"
    assert second["duplicate_of"] == first["id"]
    assert second["sha256"] == first["sha256"]
    assert _rows_of(files_lake, first["id"]) == 200
    assert _rows_of(files_lake, second["id"]) == 0
    # Another organisation may land the same public file.
    assert ingest(copy, org_id="org-other")["status"] == "landed"


def test_retry_after_a_crash_between_commit_and_bookkeeping_never_lands_twice(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.nodal_prices_csv(tmp_path, rows=300), org_id="org-crash")
    versions = len(DeltaTable(files_lake.table_uri("bronze", "files__prices")).history())
    # What a crash after the Delta commit but before the Postgres update leaves behind:
    with connect(files_database_url) as conn:
        conn.execute(
            "UPDATE ops.uploads SET status = 'received', rows_read = NULL, rows_landed = NULL,"
            " rows_quarantined = NULL WHERE id = %s",
            (report["id"],),
        )
    retried = process_upload(report["id"], database_url=files_database_url, lake=files_lake)
    assert (retried["status"], retried["rows_landed"], retried["rows_read"]) == ("landed", 300, 300)
    assert _rows_of(files_lake, report["id"]) == 300
    assert len(DeltaTable(files_lake.table_uri("bronze", "files__prices")).history()) == versions
    # Processing a landed upload again is a no-op too.
    assert (
        process_upload(report["id"], database_url=files_database_url, lake=files_lake)["rows_landed"] == 300
    )
    assert _rows_of(files_lake, report["id"]) == 300


def test_zip_bomb_is_refused_before_inflating_and_nothing_is_kept(files_database_url, tmp_path):
    bomb = corpus.zip_bomb_xlsx(tmp_path)
    store = tmp_path / "store"
    with pytest.raises(security.RejectedFile, match=r"zip bomb|compression ratio"):
        receive_upload(bomb, bomb.name, "org-x", database_url=files_database_url, storage_dir=store)
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_oversized_stream_is_cut_off_at_the_limit(files_database_url, tmp_path):
    store = tmp_path / "store"
    stream = io.BytesIO(b"a,b\n" + b"1,2\n" * 10_000)
    with pytest.raises(security.RejectedFile, match="exceeds the 1,000-byte upload limit"):
        receive_upload(
            stream, "big.csv", "org-x", database_url=files_database_url, storage_dir=store, max_bytes=1000
        )
    assert stream.tell() <= 1024 * 1024  # read at most one block past the limit, not the whole stream
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_format_comes_from_content_not_extension(files_database_url, tmp_path):
    store = tmp_path / "store"
    xlsx = corpus.merged_header_xlsx(tmp_path)
    disguised = tmp_path / "prices.csv"
    disguised.write_bytes(xlsx.read_bytes())
    receipt = receive_upload(
        disguised, disguised.name, "org-fmt", database_url=files_database_url, storage_dir=store
    )
    assert receipt.format == "xlsx"
    junk = tmp_path / "report.csv"
    junk.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" * 100)
    with pytest.raises(security.RejectedFile, match="binary content"):
        receive_upload(junk, junk.name, "org-fmt", database_url=files_database_url, storage_dir=store)
    xls = tmp_path / "old.xlsx"
    xls.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512)
    with pytest.raises(security.RejectedFile, match=r"legacy \.xls"):
        receive_upload(xls, xls.name, "org-fmt", database_url=files_database_url, storage_dir=store)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\prices.csv", "prices.csv"),
        ("prices; rm -rf $HOME.csv", "prices_ rm -rf _HOME.csv"),
        ("....csv", "csv"),
        ("", "upload"),
        ("/abs/path/ÄÖ prices (v2).xlsx", "ÄÖ prices (v2).xlsx"),
    ],
)
def test_file_names_are_sanitised(raw: str, clean: str):
    assert security.sanitised_file_name(raw) == clean


def test_traversal_name_is_stored_sanitised(files_database_url, tmp_path):
    path = corpus.ambiguous_values_csv(tmp_path)
    receipt = receive_upload(
        path,
        "../../../etc/cron.d/evil.csv",
        "org-name",
        database_url=files_database_url,
        storage_dir=tmp_path / "store",
    )
    assert receipt.file_name == "evil.csv"
    assert upload_report(receipt.upload_id, database_url=files_database_url)["file_name"] == "evil.csv"
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert len(stored) == 1 and stored[0].is_relative_to(tmp_path / "store")


def test_landing_folder_scan_ingest_and_archive(files_database_url, files_lake, tmp_path: Path):
    landing = tmp_path / "landing"
    landing.mkdir()
    good = corpus.nodal_prices_csv(landing, name="nodal_day1.csv", rows=50)
    (landing / ".hidden.csv").write_text("x")
    (landing / "partial.csv.part").write_text("x")
    bomb = corpus.zip_bomb_xlsx(landing)
    assert scan_landing_folder(landing) == [bomb, good]
    reports = {
        p.name: ingest_landing_file(
            p, "org-landing", database_url=files_database_url, lake=files_lake, storage_dir=tmp_path / "store"
        )
        for p in scan_landing_folder(landing)
    }
    assert reports["nodal_day1.csv"]["status"] == "landed"
    assert reports["nodal_day1.csv"]["source"] == "landing"
    assert reports["bomb.xlsx"]["status"] == "rejected"
    assert (landing / "processed" / "nodal_day1.csv").exists()
    assert (landing / "rejected" / "bomb.xlsx").exists()
    assert scan_landing_folder(landing) == []


def test_landing_files_by_org_reads_the_root_as_the_market_feed_and_subfolders_as_organizations(tmp_path: Path):
    landing = tmp_path / "landing"
    (landing / "org_a").mkdir(parents=True)
    (landing / "processed").mkdir()
    market = corpus.nodal_prices_csv(landing, name="feed.csv", rows=5)
    own = corpus.nodal_prices_csv(landing / "org_a", name="mine.csv", rows=5)
    corpus.nodal_prices_csv(landing / "processed", name="done.csv", rows=5)
    assert landing_files_by_org(landing, min_age_seconds=0) == [("market", market), ("org_a", own)]


def test_file_without_data_rows_fails_with_a_reason_and_can_be_retried(
    ingest, files_database_url, files_lake, tmp_path
):
    path = tmp_path / "empty_export.csv"
    path.write_text("timestamp,zone,price\n")
    report = ingest(path, org_id="org-empty")
    assert report["status"] == "failed"
    assert "no data rows found under the header" in report["error"]
    again = process_upload(report["id"], database_url=files_database_url, lake=files_lake)
    assert again["status"] == "failed"


def test_json_broken_after_the_sample_fails_cleanly_and_lands_nothing(
    ingest, files_database_url, files_lake, tmp_path
):
    records = [
        f'{{"datetime_utc": "2024-02-01 {i % 24:02d}:00:00", "zone": "Z{i}", "market": "DA", "lmp_usd_mwh": 1}}'
        for i in range(700)
    ]
    path = tmp_path / "prices_broken.json"
    path.write_text("[" + ",".join(records) + ', {"datetime_utc": ]')
    report = ingest(path, org_id="org-broken-json")
    assert report["status"] == "failed"
    assert report["error"].startswith("ValueError: invalid JSON after record 700")
    with pytest.raises(TableNotFoundError):  # this test's own lake: nothing was ever committed to it
        DeltaTable(files_lake.table_uri("bronze", "files__prices"))


def test_landing_drop_after_a_crash_before_processing_finishes_the_original(
    files_database_url, files_lake, tmp_path: Path
):
    landing = tmp_path / "landing"
    landing.mkdir()
    path = corpus.nodal_prices_csv(landing, name="nodal_crash.csv", rows=40)
    # A crash right after the file was registered: the upload stays 'received' and the file stays in place.
    stuck = receive_upload(
        path, path.name, "org-stuck", database_url=files_database_url, storage_dir=tmp_path / "store"
    )
    assert upload_report(stuck.upload_id, database_url=files_database_url)["status"] == "received"
    report = ingest_landing_file(
        path, "org-stuck", database_url=files_database_url, lake=files_lake, storage_dir=tmp_path / "store"
    )
    assert (report["id"], report["status"], report["rows_landed"]) == (stuck.upload_id, "landed", 40)
    assert _rows_of(files_lake, stuck.upload_id) == 40
    assert (landing / "processed" / "nodal_crash.csv").exists()
