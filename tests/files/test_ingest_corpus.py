"""Real messy files of every accepted format through the upload library, asserting row by row what landed
(canonical values, UTC instants, lineage) and what was quarantined (row number and reason)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from ingestion.files.service import quarantined_rows
from tests.files import corpus


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def landed(lake, dataset: str, upload_id: int) -> list[dict[str, Any]]:
    table = DeltaTable(lake.table_uri("bronze", f"files__{dataset}")).to_pyarrow_table()
    rows = [r for r in table.to_pylist() if r["_upload_id"] == upload_id]
    order = ("market", "zone", "fuel", "node", "ts_utc")
    return sorted(rows, key=lambda r: (r["_sheet"] or "", r["_row_number"], *(str(r.get(k)) for k in order)))


def quarantine(report: dict[str, Any], url: str) -> list[tuple[int | None, str]]:
    return [(q["row_number"], q["reason"]) for q in quarantined_rows(report["id"], database_url=url)]


def assert_counts(report: dict[str, Any], landed_n: int, quarantined_n: int) -> None:
    assert report["status"] == "landed", report["error"]
    assert (report["rows_landed"], report["rows_quarantined"]) == (landed_n, quarantined_n)
    assert report["rows_read"] == landed_n + quarantined_n


def test_latin1_semicolon_decimal_comma_berlin_spring_forward(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(
        corpus.berlin_prices_latin1(tmp_path), default_tz="Europe/Berlin", defaults={"market": "DA"}
    )
    assert_counts(report, 3, 4)
    assert report["detected_schema"]["delimiter"] == ";"
    assert report["detected_schema"]["encoding"] == "cp1252"
    assert report["mapping"]["constants"]["currency"] == "EUR"
    rows = landed(files_lake, "prices", report["id"])
    assert [(r["_row_number"], r["ts_utc"], r["zone"], r["price"]) for r in rows] == [
        (4, _utc(2024, 3, 30, 23), "DE-Süd", 45.10),
        (5, _utc(2024, 3, 31, 0), "DE-Süd", -5.25),
        (7, _utc(2024, 3, 31, 1), "DE-Süd", 1234.50),
    ]
    assert {r["source_tz"] for r in rows} == {"Europe/Berlin"}
    assert {(r["market"], r["currency"], r["_file_name"], r["_org_id"]) for r in rows} == {
        ("DA", "EUR", "day_ahead_prices_de.csv", "org-test")
    }
    q = quarantine(report, files_database_url)
    assert [n for n, _ in q] == [6, 8, 9, 11]
    assert "nonexistent local time '31.03.2024 02:00'" in q[0][1]
    assert q[1][1].startswith("duplicate key")
    assert q[2][1] == "unparseable number in price: 'n.v.'"
    assert q[3][1] == "unparseable timestamp 'Summe'"


def test_utf8_bom_offsets_across_us_fall_back_and_negative_load(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.chicago_load_bom(tmp_path))
    assert_counts(report, 4, 1)
    assert report["dataset"] == "load"
    rows = landed(files_lake, "load", report["id"])
    assert [(r["_row_number"], r["ts_utc"], r["load_mw"], r["source_tz"]) for r in rows] == [
        (2, _utc(2024, 11, 3, 5), 12500.5, "-05:00"),
        (3, _utc(2024, 11, 3, 6), 12400.0, "-05:00"),
        (4, _utc(2024, 11, 3, 7), 12300.0, "-06:00"),
        (6, _utc(2024, 11, 3, 9), 12100.0, "-06:00"),
    ]
    assert quarantine(report, files_database_url) == [(5, "load must be between 0 and 1,000,000 MW")]


def test_naive_chicago_times_resolve_repeated_hour_by_order_and_quarantine_gap(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(
        corpus.chicago_naive_lmp(tmp_path), default_tz="America/Chicago", defaults={"currency": "USD"}
    )
    assert_counts(report, 7, 1)
    rows = landed(files_lake, "prices", report["id"])
    assert [(r["_row_number"], r["node"], r["ts_utc"], r["price"]) for r in rows] == [
        (2, "HB_NORTH", _utc(2024, 3, 10, 7), 20.5),
        (4, "HB_NORTH", _utc(2024, 3, 10, 8), 22.0),
        (5, "HB_NORTH", _utc(2024, 11, 3, 5), 30.0),
        (6, "HB_NORTH", _utc(2024, 11, 3, 6), 31.0),
        (7, "HB_NORTH", _utc(2024, 11, 3, 7), 32.0),
        (8, "HB_NORTH", _utc(2024, 11, 3, 8), 33.0),
        (9, "HB_SOUTH", _utc(2024, 11, 3, 6), 40.0),
    ]
    assert {(r["market"], r["zone"], r["currency"]) for r in rows} == {("RT", "ERCOT", "USD")}
    ((row, reason),) = quarantine(report, files_database_url)
    assert row == 3 and reason.startswith("nonexistent local time '2024/3/10 2:00' in America/Chicago")


def test_excel_hour_ending_columns_with_25_and_23_hour_days(ingest, files_lake, files_database_url, tmp_path):
    report = ingest(
        corpus.wide_hours_xlsx(tmp_path),
        default_tz="Europe/Berlin",
        defaults={"zone": "DE-LU", "market": "DA", "currency": "EUR"},
    )
    assert_counts(report, 25 + 23 + 24, 1)
    rows = landed(files_lake, "prices", report["id"])
    fall = [r for r in rows if r["_row_number"] == 3]
    # 2024-10-27 local midnight is 22:00Z the day before; HE01..HE25 are 25 consecutive UTC hours.
    assert [r["ts_utc"] for r in sorted(fall, key=lambda r: r["price"])] == [
        _utc(2024, 10, 26, 22 + h) if h < 2 else _utc(2024, 10, 27, h - 2) for h in range(25)
    ]
    spring = sorted((r for r in rows if r["_row_number"] == 4), key=lambda r: r["price"])
    assert spring[0]["ts_utc"] == _utc(2024, 3, 30, 23) and spring[-1]["ts_utc"] == _utc(2024, 3, 31, 21)
    assert {r["_sheet"] for r in rows} == {"DA prices"}
    assert {r["interval_minutes"] for r in rows} == {60}
    assert quarantine(report, files_database_url) == [
        (4, "hour ending 24 does not exist on 2024-03-31 (23-hour day in Europe/Berlin)")
    ]


def test_excel_merged_header_cells_and_formula_without_cached_value(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.merged_header_xlsx(tmp_path), defaults={"zone": "DE-LU"})
    assert_counts(report, 4, 1)
    assert report["mapping"]["wide_field"] == "market"
    rows = landed(files_lake, "prices", report["id"])
    assert [(r["_row_number"], r["market"], r["ts_utc"], r["price"], r["currency"]) for r in rows] == [
        (3, "DA", _utc(2024, 6, 1, 0), 50.5, "EUR"),
        (3, "RT", _utc(2024, 6, 1, 0), 52.0, "EUR"),
        (5, "DA", _utc(2024, 6, 1, 2), 47.25, "EUR"),
        (5, "RT", _utc(2024, 6, 1, 2), 46.0, "EUR"),
    ]
    ((row, reason),) = quarantine(report, files_database_url)
    assert row == 4 and "formula without a cached value in Price (€/MWh) RT" in reason


def test_json_wide_fuel_columns_unpivot(ingest, files_lake, files_database_url, tmp_path):
    report = ingest(corpus.generation_by_fuel_json(tmp_path))
    assert_counts(report, 5, 1)
    assert (report["dataset"], report["mapping"]["wide_field"]) == ("generation", "fuel")
    rows = landed(files_lake, "generation", report["id"])
    assert [(r["_row_number"], r["fuel"], r["generation_mw"], r["zone"], r["ts_utc"]) for r in rows] == [
        (1, "nuclear", 41000.0, "FR", _utc(2024, 5, 1, 0)),
        (1, "solar", 0.0, "FR", _utc(2024, 5, 1, 0)),
        (1, "wind", 3500.5, "FR", _utc(2024, 5, 1, 0)),
        (2, "solar", 0.0, "FR", _utc(2024, 5, 1, 1)),
        (2, "wind", 3600.0, "FR", _utc(2024, 5, 1, 1)),
    ]
    assert quarantine(report, files_database_url) == [(2, "generation must be between 0 and 1,000,000 MW")]


def test_jsonl_bids_with_broken_line_unknown_side_and_repeated_id(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.bids_jsonl(tmp_path))
    assert_counts(report, 2, 3)
    rows = landed(files_lake, "bids", report["id"])
    assert [
        (r["_row_number"], r["bid_id"], r["side"], r["price"], r["quantity_mw"], r["ts_utc"]) for r in rows
    ] == [
        (1, "B1", "sell", 80.0, 5.0, _utc(2024, 7, 1, 10)),
        (5, "B4", "buy", -10.0, 2.0, _utc(2024, 7, 1, 12)),
    ]
    q = quarantine(report, files_database_url)
    assert [n for n, _ in q] == [2, 3, 4]
    assert q[0][1].startswith("invalid JSON")
    assert q[1][1] == "unknown side 'hold' (expected buy or sell)"
    assert q[2][1].startswith("duplicate key bid_id")


def test_parquet_typed_timestamps_and_impossible_temperature(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.weather_parquet(tmp_path))
    assert_counts(report, 2, 1)
    rows = landed(files_lake, "weather", report["id"])
    assert [
        (r["_row_number"], r["ts_utc"], r["zone"], r["temperature_c"], r["wind_speed_ms"]) for r in rows
    ] == [
        (1, _utc(2024, 1, 1, 0), "NO1", -3.5, 5.0),
        (3, _utc(2024, 1, 1, 2), "NO1", -4.0, 7.5),
    ]
    assert quarantine(report, files_database_url) == [(2, "temperature outside -90..60 °C")]


def test_tsv_one_column_per_zone_with_excel_serial_dates(ingest, files_lake, files_database_url, tmp_path):
    report = ingest(corpus.wide_zones_prices_csv(tmp_path), defaults={"currency": "EUR", "market": "DA"})
    assert_counts(report, 5, 0)
    assert report["mapping"]["wide_field"] == "zone"
    rows = landed(files_lake, "prices", report["id"])
    assert sorted((r["_row_number"], r["zone"], r["ts_utc"], r["price"]) for r in rows) == [
        (2, "DE_LU", _utc(2024, 3, 1, 0), 60.1),
        (2, "FR", _utc(2024, 3, 1, 0), 55.0),
        (3, "DE_LU", _utc(2024, 3, 1, 1), 61.2),
        (3, "FR", _utc(2024, 3, 1, 1), 56.0),
        (3, "NL", _utc(2024, 3, 1, 1), 58.8),
    ]


def test_mixed_date_formats_in_one_column(ingest, files_lake, files_database_url, tmp_path):
    report = ingest(corpus.mixed_dates_csv(tmp_path))
    assert_counts(report, 3, 2)
    rows = landed(files_lake, "prices", report["id"])
    assert [(r["_row_number"], r["ts_utc"], r["price"], r["market"], r["currency"]) for r in rows] == [
        (2, _utc(2024, 1, 15, 0), 400.5, "DA", "PLN"),
        (3, _utc(2024, 1, 15, 1), 401.0, "DA", "PLN"),
        (4, _utc(2024, 1, 15, 2), 402.0, "DA", "PLN"),
    ]
    assert quarantine(report, files_database_url) == [
        (5, "unparseable timestamp '31.02.2024 03:00'"),
        (6, "missing zone"),
    ]


def test_profile_reports_nulls_ranges_and_gaps(ingest, tmp_path):
    report = ingest(
        corpus.chicago_naive_lmp(tmp_path),
        org_id="org-profile",
        default_tz="America/Chicago",
        defaults={"currency": "USD"},
    )
    profile = report["profile"]
    assert profile["null_rate"]["price"] == 0.0
    assert profile["ranges"]["price"] == [20.5, 40.0]
    assert profile["duplicates"] == 0
    assert profile["series"] == 2
    # HB_NORTH spans 2024-03-10 07:00Z .. 2024-11-03 08:00Z hourly with 6 rows: the rest are gaps.
    assert profile["series_with_gaps"][0]["series"].startswith("zone=ERCOT, node=HB_NORTH")
    assert profile["missing_intervals"] > 5000


@pytest.mark.parametrize("builder", [corpus.ambiguous_values_csv])
def test_ambiguous_file_is_held_then_lands_with_an_explicit_mapping(
    builder, ingest, files_lake, files_database_url, tmp_path: Path
):
    from ingestion.files.service import apply_explicit_mapping

    report = ingest(builder(tmp_path))
    assert report["status"] == "held_for_mapping"
    assert report["rows_landed"] is None
    assert report["mapping_confidence"] < 0.7
    with pytest.raises(ValueError, match="not in the file"):
        apply_explicit_mapping(
            report["id"],
            {"dataset": "load", "columns": {"load_mw": "nope"}},
            database_url=files_database_url,
            lake=files_lake,
        )
    final = apply_explicit_mapping(
        report["id"],
        {
            "dataset": "load",
            "columns": {"ts_utc": "time", "zone": "area", "load_mw": "value"},
            "timezone": "Europe/Stockholm",
        },
        database_url=files_database_url,
        lake=files_lake,
    )
    assert_counts(final, 2, 0)
    assert final["mapping"]["source"] == "explicit"
    rows = landed(files_lake, "load", report["id"])
    assert [(r["ts_utc"], r["zone"], r["load_mw"], r["source_tz"]) for r in rows] == [
        (_utc(2024, 1, 31, 23), "SE3", 12.0, "Europe/Stockholm"),
        (_utc(2024, 2, 1, 0), "SE3", 13.0, "Europe/Stockholm"),
    ]


def test_quoted_line_breaks_in_csv_cells_land_with_their_starting_line(
    ingest, files_lake, files_database_url, tmp_path
):
    report = ingest(corpus.multiline_notes_csv(tmp_path))
    assert_counts(report, 5, 2)
    rows = landed(files_lake, "load", report["id"])
    assert [(r["_row_number"], r["ts_utc"], r["load_mw"]) for r in rows] == [
        (2, _utc(2024, 1, 1, 0), 1000.0),
        (3, _utc(2024, 1, 1, 1), 1001.0),
        (5, _utc(2024, 1, 1, 2), 1002.0),
        (11, _utc(2024, 1, 1, 5), 1005.0),
        (12, _utc(2024, 1, 1, 6), 1006.0),
    ]
    q = quarantined_rows(report["id"], database_url=files_database_url)
    assert [(r["row_number"], r["reason"]) for r in q] == [
        (8, "unparseable number in load_mw: 'abc'"),
        (9, "row has 5 fields, header has 4"),
    ]
    assert q[1]["raw_text"] == '2024-01-01 04:00,NORTH,1004,"two\r\nlines",extra'


def test_row_numbers_are_stored_delta_encoded_and_stay_so_through_compaction(ingest, files_lake, tmp_path):
    import pyarrow.parquet as pq

    from infra.lake_maintenance import maintain_table

    def row_number_encodings() -> set[str]:
        table = DeltaTable(files_lake.table_uri("bronze", "files__prices"))
        found = set()
        for uri in table.file_uris():
            footer = pq.ParquetFile(uri).metadata
            column = footer.schema.names.index("_row_number")
            found |= {e for g in range(footer.num_row_groups) for e in footer.row_group(g).column(column).encodings}
        return found

    for rows in (300, 310):  # two uploads, two files
        assert_counts(ingest(corpus.nodal_prices_csv(tmp_path, name=f"nodal_{rows}.csv", rows=rows)), rows, 0)
    assert "DELTA_BINARY_PACKED" in row_number_encodings()
    before = sorted(DeltaTable(files_lake.table_uri("bronze", "files__prices")).to_pyarrow_table().to_pylist(),
                    key=lambda r: (r["_upload_id"], r["_row_number"]))

    result = maintain_table(files_lake, "bronze", "files__prices", zorder_by=("ts_utc",))
    assert result is not None and (result.files_before, result.files_after) == (2, 1)
    assert "DELTA_BINARY_PACKED" in row_number_encodings()
    after = DeltaTable(files_lake.table_uri("bronze", "files__prices")).to_pyarrow_table().to_pylist()
    assert sorted(after, key=lambda r: (r["_upload_id"], r["_row_number"])) == before
