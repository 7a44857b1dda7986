"""Hourly files on DST days: wide HE01..HE24 layouts with the repeated fall-back hour marked (HE02*, HE02X,
HE02DST, Hour 3B) or counted as HE25, and the spring-forward day's missing hour, around the US and EU
changes. Every cell lands at its UTC instant or is quarantined with a reason; none is dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingestion.files.mapping import Mapping
from ingestion.files.readers import DelimitedReader
from ingestion.files.service import apply_explicit_mapping
from ingestion.files.transform import CanonicalBuilder
from tests.files import corpus
from tests.files.test_ingest_corpus import assert_counts, landed, quarantine

HE = [f"HE{h:02d}" for h in range(1, 25)]


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _row(header: list[str], first: list[object], row_no: int, skip: tuple[str, ...] = ()) -> list[object]:
    """Leading cells, then each hour column filled with row_no*100 + its position (1-based), except `skip`."""
    hours = header[len(first) :]
    return first + [None if c in skip else row_no * 100 + i for i, c in enumerate(hours, start=1)]


def _by_price(rows: list[dict]) -> dict[float, datetime]:
    return {r["price"]: r["ts_utc"] for r in rows}


@pytest.mark.parametrize("marker", ["HE02*", "HE02X", "HE02DST"])
def test_us_wall_clock_hours_with_a_marked_repeated_hour(marker, ingest, files_lake, files_database_url, tmp_path):
    header = ["Delivery Date", "Settlement Point", *HE, marker]
    rows = [
        _row(header, ["2024-03-10", "HB_NORTH"], 2, skip=("HE03", marker)),  # spring: HE03 is skipped
        _row(header, ["2024-03-10", "HB_SOUTH"], 3, skip=(marker,)),  # HE03 filled by mistake
        _row(header, ["2024-11-03", "HB_NORTH"], 4),  # fall: HE02 then the repeated HE02*
        _row(header, ["2024-06-01", "HB_NORTH"], 5, skip=(marker,)),  # ordinary day
        _row(header, ["2024-06-02", "HB_NORTH"], 6),  # repeated-hour cell on an ordinary day
    ]
    path = corpus.wide_hours_csv(tmp_path, "ercot_dam_spp_wide.csv", header, rows)
    report = ingest(
        path,
        org_id=f"org-dst-{marker}",
        default_tz="America/Chicago",
        defaults={"zone": "ERCOT", "market": "DA", "currency": "USD"},
    )
    assert_counts(report, 23 + 23 + 25 + 24 + 24, 2)
    assert report["mapping"]["wide_columns"][marker] == "2*"
    got = landed(files_lake, "prices", report["id"])
    by_row = {n: _by_price([r for r in got if r["_row_number"] == n]) for n in range(2, 7)}
    day = {n: d for n, d in zip(range(2, 7), (10, 10, 3, 1, 2), strict=True)}
    # 2024-03-10: midnight CST is 06:00Z; from HE04 (03:00 CDT) on, hour ending k starts at (k + 4):00Z.
    for n in (2, 3):
        expected = {n * 100 + k: _utc(2024, 3, 10) + timedelta(hours=k + 5 if k < 3 else k + 4) for k in HE_K}
        expected.pop(n * 100 + 3)
        assert by_row[n] == expected
    # 2024-11-03: midnight CDT is 05:00Z; HE02 06:00Z, HE02* 07:00Z, HE03 (02:00 CST) 08:00Z ... HE24 05:00Z.
    fall = {400 + k: _utc(2024, 11, 3) + timedelta(hours=k + 4 if k < 3 else k + 5) for k in HE_K}
    assert by_row[4] == {**fall, 425: _utc(2024, 11, 3, 7)}
    for n in (5, 6):  # CDT all day: hour ending k starts at (k + 4):00Z
        assert by_row[n] == {n * 100 + k: _utc(2024, 6, day[n]) + timedelta(hours=k + 4) for k in HE_K}
    assert quarantine(report, files_database_url) == [
        (3, "hour ending 3 (column HE03) does not exist on 2024-03-10: the clocks skip that hour "
         "(23-hour day in America/Chicago)"),
        (6, f"hour ending 2 (column {marker}) is marked as the repeated hour, but 2024-06-02 repeats no hour "
         "(24-hour day in America/Chicago)"),
    ]  # fmt: skip


HE_K = range(1, 25)


def test_us_elapsed_hours_with_he25(ingest, files_lake, files_database_url, tmp_path):
    header = ["Date", "Pnode Name", *HE, "HE25"]
    rows = [
        _row(header, ["2024-11-03", "WESTERN HUB"], 2),  # 25 hours
        _row(header, ["2024-03-10", "WESTERN HUB"], 3, skip=("HE24", "HE25")),  # 23 hours
        _row(header, ["2024-03-10", "EASTERN HUB"], 4, skip=("HE25",)),  # 24 values on a 23-hour day
    ]
    path = corpus.wide_hours_csv(tmp_path, "pjm_da_lmp_wide.csv", header, rows)
    report = ingest(path, default_tz="America/New_York", defaults={"zone": "PJM", "market": "DA", "currency": "USD"})
    assert_counts(report, 25 + 23 + 23, 1)
    got = landed(files_lake, "prices", report["id"])
    # Elapsed hours: hour ending k starts k - 1 hours after local midnight (04:00Z EDT, 05:00Z EST).
    assert _by_price([r for r in got if r["_row_number"] == 2]) == {
        200 + k: _utc(2024, 11, 3, 4) + timedelta(hours=k - 1) for k in range(1, 26)
    }
    for n in (3, 4):
        assert _by_price([r for r in got if r["_row_number"] == n]) == {
            n * 100 + k: _utc(2024, 3, 10, 5) + timedelta(hours=k - 1) for k in range(1, 24)
        }
    assert quarantine(report, files_database_url) == [
        (4, "hour ending 24 does not exist on 2024-03-10 (23-hour day in America/New_York)")
    ]


def test_eu_hours_without_marker_are_read_from_the_empty_hour(ingest, files_lake, files_database_url, tmp_path):
    header = ["Date", "Zone", *HE]
    rows = [
        _row(header, ["2024-03-31", "DE-A"], 2, skip=("HE03",)),  # clock: the skipped hour is empty
        _row(header, ["2024-03-31", "DE-B"], 3, skip=("HE24",)),  # elapsed: the 24th hour is empty
        _row(header, ["2024-10-27", "DE-A"], 4),  # 24 columns cannot count 25 hours: clock
    ]
    path = corpus.wide_hours_csv(tmp_path, "spot_prices_de.csv", header, rows)
    report = ingest(path, default_tz="Europe/Berlin", defaults={"market": "DA", "currency": "EUR"})
    assert_counts(report, 23 + 23 + 24, 0)
    got = landed(files_lake, "prices", report["id"])
    spring = _utc(2024, 3, 30, 23)  # local midnight (CET)
    assert _by_price([r for r in got if r["_row_number"] == 2]) == {
        200 + k: spring + timedelta(hours=k - 1 if k < 3 else k - 2) for k in HE_K if k != 3
    }
    assert _by_price([r for r in got if r["_row_number"] == 3]) == {
        300 + k: spring + timedelta(hours=k - 1) for k in range(1, 24)
    }
    fall = _utc(2024, 10, 26, 22)  # local midnight (CEST); 02:00-03:00 happens twice, HE03 is the first
    assert _by_price([r for r in got if r["_row_number"] == 4]) == {
        400 + k: fall + timedelta(hours=k - 1 if k <= 3 else k) for k in HE_K
    }


@pytest.mark.parametrize("numbering", ["clock", "elapsed"])
def test_a_day_both_numberings_fit_is_held_until_a_mapping_says_which(
    numbering, ingest, files_lake, files_database_url, tmp_path
):
    header = ["Date", "Zone", *HE]
    rows = [
        _row(header, ["2024-03-30", "DE-C"], 2),
        _row(header, ["2024-03-31", "DE-C"], 3),  # 24 values on a 23-hour day: HE03 or HE24 is extra
    ]
    path = corpus.wide_hours_csv(tmp_path, "spot_prices_de.csv", header, rows)
    held = ingest(
        path, org_id=f"org-held-{numbering}", default_tz="Europe/Berlin", defaults={"market": "DA", "currency": "EUR"}
    )
    assert held["status"] == "held_for_mapping"
    assert held["error"] == (
        "cannot place hour ending 3 (column HE03) on 2024-03-31 (23-hour day in Europe/Berlin): the day fills "
        "both the hour the clocks skip and the last hour, or neither, so clock and elapsed hour numbering "
        "disagree; give hour_numbering (clock or elapsed) in an explicit mapping"
    )
    proposed = {k: held["mapping"][k] for k in ("dataset", "columns", "constants", "layout", "date_column")}
    proposed |= {k: held["mapping"][k] for k in ("wide_columns", "wide_field", "value_field")}
    final = apply_explicit_mapping(
        held["id"], {**proposed, "hour_numbering": numbering}, database_url=files_database_url, lake=files_lake
    )
    assert_counts(final, 24 + 23, 1)
    got = landed(files_lake, "prices", held["id"])
    assert _by_price([r for r in got if r["_row_number"] == 2]) == {
        200 + k: _utc(2024, 3, 29, 23) + timedelta(hours=k - 1) for k in HE_K
    }
    spring = _utc(2024, 3, 30, 23)
    if numbering == "clock":
        expected = {300 + k: spring + timedelta(hours=k - 1 if k < 3 else k - 2) for k in HE_K if k != 3}
        reason = (
            "hour ending 3 (column HE03) does not exist on 2024-03-31: the clocks skip that hour "
            "(23-hour day in Europe/Berlin)"
        )
    else:
        expected = {300 + k: spring + timedelta(hours=k - 1) for k in range(1, 24)}
        reason = "hour ending 24 does not exist on 2024-03-31 (23-hour day in Europe/Berlin)"
    assert _by_price([r for r in got if r["_row_number"] == 3]) == expected
    assert quarantine(final, files_database_url) == [(3, reason)]


def test_eu_hour_3a_3b_columns(ingest, files_lake, files_database_url, tmp_path):
    header = ["Date", "Hour 1", "Hour 2", "Hour 3A", "Hour 3B", *(f"Hour {h}" for h in range(4, 25))]
    rows = [
        _row(header, ["2024-10-27"], 2),  # 25 values
        _row(header, ["2024-03-31"], 3, skip=("Hour 3A", "Hour 3B")),  # 23 values
        _row(header, ["2024-06-01"], 4, skip=tuple(header)),  # no value at all: reported, not lost
    ]
    path = corpus.wide_hours_csv(tmp_path, "epex_spot_hours.csv", header, rows)
    report = ingest(path, default_tz="Europe/Berlin", defaults={"zone": "DE-LU", "market": "DA", "currency": "EUR"})
    assert_counts(report, 25 + 23, 1)
    assert report["mapping"]["wide_columns"]["Hour 3B"] == "3*"
    assert quarantine(report, files_database_url) == [(4, "no value in any of the 25 hour columns")]
    got = landed(files_lake, "prices", report["id"])
    # Positions: Hour 1, Hour 2, 3A, 3B, Hour 4.. -> 25 consecutive UTC hours from local midnight.
    assert _by_price([r for r in got if r["_row_number"] == 2]) == {
        200 + i: _utc(2024, 10, 26, 22) + timedelta(hours=i - 1) for i in range(1, 26)
    }
    assert _by_price([r for r in got if r["_row_number"] == 3]) == {
        300 + i: _utc(2024, 3, 30, 23) + timedelta(hours=i - 1 if i < 3 else i - 3) for i in range(1, 26)
        if i not in (3, 4)
    }  # fmt: skip


def test_long_hour_column_resolves_an_unmarked_repeated_hour_by_order(ingest, files_lake, files_database_url, tmp_path):
    lines = ["Delivery Date,Hour Ending,Settlement Point,Settlement Point Price"]
    hours = ["01:00", "02:00", "02:00", *(f"{h:02d}:00" for h in range(3, 25))]  # fall-back day, 25 rows
    lines += [f"2024-11-03,{h},HB_HOUSTON,{i}" for i, h in enumerate(hours, start=1)]
    lines += ["2024-11-03,02:00,HB_HOUSTON,99"]  # a third 02:00 cannot be placed: quarantined
    path = tmp_path / "ercot_rt_spp.csv"
    path.write_text("\n".join(lines) + "\n")
    report = ingest(path, default_tz="America/Chicago", defaults={"zone": "ERCOT", "market": "RT", "currency": "USD"})
    assert_counts(report, 25, 1)
    got = landed(files_lake, "prices", report["id"])
    # 25 consecutive hours from local midnight (05:00Z), in file order.
    assert [(r["_row_number"], r["ts_utc"]) for r in got] == [
        (n, _utc(2024, 11, 3, 5) + timedelta(hours=n - 2)) for n in range(2, 27)
    ]
    ((row, reason),) = quarantine(report, files_database_url)
    assert row == 27 and reason.startswith("duplicate key")


def _built_in_tiny_chunks(path, mapping: Mapping) -> tuple[list[tuple[int, str, datetime]], list]:
    builder = CanonicalBuilder(
        mapping, upload_id=1, file_name="f", org_id="o", batch_id="b", ingested_at=datetime.now(UTC)
    )
    landed_rows, quarantined, tables = [], [], []
    for chunk in DelimitedReader(path).chunks(block_bytes=256, chunk_rows=7):
        table, q = builder.build(chunk)
        tables.append(table)
        quarantined += q
    table, q = builder.flush()
    tables.append(table)
    quarantined += q
    for t in tables:
        columns = ("_row_number", "node", "ts_utc")
        landed_rows += zip(*(t.column(c).to_pylist() for c in columns), strict=True)
    assert builder.rows_read == builder.rows_landed + builder.rows_quarantined
    return sorted(landed_rows), quarantined


@pytest.mark.parametrize("order", ["by_date", "by_node"])
def test_long_dst_days_cut_by_chunk_ends_are_numbered_as_whole_days(tmp_path, order):
    # CAISO-style elapsed hours (1..25 on the fall-back day) and ERCOT-style clock hours (HE03 absent on
    # the spring-forward day), in chunks of 7 rows: every DST day is cut several times.
    nodes = ["N1", "N2", "N3"]
    days = [("2024-11-03", list(range(1, 26))), ("2024-03-10", [h for h in range(1, 25) if h != 3])]
    records = [(d, h, n) for d, hs in days for h in hs for n in nodes]
    if order == "by_node":
        records.sort(key=lambda r: (r[2], r[0] != "2024-11-03", r[1]))
    path = tmp_path / "long_hours.csv"
    path.write_text("date,hour,node,price\n" + "".join(f"{d},{h},{n},{h}\n" for d, h, n in records))
    mapping = Mapping(
        "prices",
        columns={"node": "node", "price": "price"},
        constants={"zone": "Z", "market": "DA", "currency": "USD"},
        date_column="date",
        hour_column="hour",
        timezone="America/Chicago",
    )
    got, quarantined = _built_in_tiny_chunks(path, mapping)
    assert quarantined == []
    expected = []
    for row, (d, h, n) in enumerate(records, start=2):
        if d == "2024-11-03":  # 25 elapsed hours from midnight CDT (05:00Z)
            ts = _utc(2024, 11, 3, 5) + timedelta(hours=h - 1)
        else:  # clock hours from midnight CST (06:00Z); from HE04 on CDT
            ts = _utc(2024, 3, 10, 6) + timedelta(hours=h - 1 if h < 3 else h - 2)
        expected.append((row, n, ts))
    assert got == expected


def test_an_hour_column_that_reads_as_text_is_checked_not_skipped(ingest, files_lake, files_database_url, tmp_path):
    header = ["Date", "Zone", *HE]
    rows = [_row(header, [f"2024-06-0{d}", "NL"], d + 1) for d in (1, 2)]
    for row in rows:
        row[2 + 4] = "#VALUE!"  # HE05
    path = corpus.wide_hours_csv(tmp_path, "spot_prices_nl.csv", header, rows)
    report = ingest(path, default_tz="Europe/Amsterdam", defaults={"market": "DA", "currency": "EUR"})
    assert_counts(report, 2 * 23, 2)
    assert report["mapping"]["wide_columns"]["HE05"] == "5"
    assert quarantine(report, files_database_url) == [
        (2, "unparseable number in price: '#VALUE!'"),
        (3, "unparseable number in price: '#VALUE!'"),
    ]
    got = landed(files_lake, "prices", report["id"])
    assert _by_price([r for r in got if r["_row_number"] == 2]) == {
        200 + k: _utc(2024, 5, 31, 22) + timedelta(hours=k - 1) for k in HE_K if k != 5
    }
