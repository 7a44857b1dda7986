"""A corpus of small, deliberately messy market files, built at test time (nothing binary is committed).

Each builder writes one file into a folder and returns its path; the tests know, row by row, what each
file should land and what it should quarantine. Row numbers in comments are 1-based source rows.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def berlin_prices_latin1(folder: Path) -> Path:
    """Semicolon CSV in Latin-1 with decimal commas, day-first dates, notes on top and a footer.

    Europe/Berlin spring-forward on 2024-03-31: 02:00 does not exist.
    """
    lines = [
        "Exportiert am 01.04.2024;;",  # 1 notes
        "Quelle: Börse;;",  # 2 notes
        "Datum;Zone;Preis (EUR/MWh)",  # 3 header
        "31.03.2024 00:00;DE-Süd;45,10",  # 4 -> 2024-03-30 23:00Z
        "31.03.2024 01:00;DE-Süd;-5,25",  # 5 negative price is legal -> 00:00Z
        "31.03.2024 02:00;DE-Süd;40,00",  # 6 nonexistent local time -> quarantine
        "31.03.2024 03:00;DE-Süd;1.234,50",  # 7 thousands separator -> 01:00Z
        "31.03.2024 03:00;DE-Süd;99,00",  # 8 duplicate key -> quarantine
        "31.03.2024 04:00;DE-Süd;n.v.",  # 9 unparseable number -> quarantine
        "",  # 10 blank line: not a row
        "Summe;;",  # 11 footer -> quarantine (unparseable timestamp)
    ]
    path = folder / "day_ahead_prices_de.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return path


def chicago_load_bom(folder: Path) -> Path:
    """UTF-8 with BOM, quoted thousands separators, ISO timestamps with offsets across the US fall-back
    (America/Chicago, 2024-11-03: 01:00 CDT then 01:00 CST), and a negative load."""
    rows = [
        ("2024-11-03T00:00:00-05:00", "ERCOT_NORTH", '"12,500.5"'),  # 2 -> 05:00Z
        ("2024-11-03T01:00:00-05:00", "ERCOT_NORTH", '"12,400"'),  # 3 -> 06:00Z
        ("2024-11-03T01:00:00-06:00", "ERCOT_NORTH", '"12,300"'),  # 4 -> 07:00Z (repeated hour, CST)
        ("2024-11-03T02:00:00-06:00", "ERCOT_NORTH", "-5"),  # 5 negative load -> quarantine
        ("2024-11-03T03:00:00-06:00", "ERCOT_NORTH", "12100"),  # 6 -> 09:00Z
    ]
    text = "timestamp,zone,load (MW)\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    path = folder / "load.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def chicago_naive_lmp(folder: Path) -> Path:
    """Naive local times in `YYYY/M/D H:MM` (America/Chicago) with the repeated fall-back hour listed
    twice (resolved by order) and a spring-forward hour that does not exist."""
    lines = [
        "Date Time,Node,Zone,Market,LMP",
        "2024/3/10 1:00,HB_NORTH,ERCOT,RT,20.5",  # 2 -> 07:00Z (CST)
        "2024/3/10 2:00,HB_NORTH,ERCOT,RT,21",  # 3 nonexistent -> quarantine
        "2024/3/10 3:00,HB_NORTH,ERCOT,RT,22",  # 4 -> 08:00Z (CDT)
        "2024/11/3 0:00,HB_NORTH,ERCOT,RT,30",  # 5 -> 05:00Z
        "2024/11/3 1:00,HB_NORTH,ERCOT,RT,31",  # 6 first 01:00 (CDT) -> 06:00Z
        "2024/11/3 1:00,HB_NORTH,ERCOT,RT,32",  # 7 second 01:00 (CST) -> 07:00Z
        "2024/11/3 2:00,HB_NORTH,ERCOT,RT,33",  # 8 -> 08:00Z
        "2024/11/3 1:00,HB_SOUTH,ERCOT,RT,40",  # 9 another node: its own first 01:00 -> 06:00Z
    ]
    path = folder / "ercot_rt_lmp.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def wide_hours_xlsx(folder: Path) -> Path:
    """Excel, one row per day with hour-ending columns HE01..HE24 plus HE25 (Europe/Berlin).

    2024-10-27 has 25 hours (HE25 filled); 2024-03-31 has 23 (its HE24 is filled by mistake)."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "DA prices"
    ws.append(["Day-ahead prices, EUR/MWh, zone DE-LU"])  # 1 title note
    ws.append(["Date"] + [f"HE{h:02d}" for h in range(1, 26)])  # 2 header
    ws.append([datetime(2024, 10, 27)] + [float(h) for h in range(1, 26)])  # 3: 25 values
    ws.append([datetime(2024, 3, 31)] + [float(100 + h) for h in range(1, 25)] + [None])  # 4: HE24 invalid
    ws.append([datetime(2024, 10, 28)] + [float(200 + h) for h in range(1, 25)] + [None])  # 5: normal day
    path = folder / "prices_wide.xlsx"
    wb.save(path)
    return path


def merged_header_xlsx(folder: Path) -> Path:
    """Excel with merged header cells ("Date" over two rows, "Price (€/MWh)" over DA|RT), a formula without a
    cached value, and a second sheet that is only notes."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Prices"
    ws["A1"] = "Date"
    ws.merge_cells("A1:A2")
    ws["B1"] = "Price (€/MWh)"
    ws.merge_cells("B1:C1")
    ws["B2"], ws["C2"] = "DA", "RT"
    ws.append([datetime(2024, 6, 1, 0, 0), 50.5, 52.0])  # 3
    ws.append([datetime(2024, 6, 1, 1, 0), 48.0, "=B4*1.1"])  # 4: formula never computed -> quarantine
    ws.append([datetime(2024, 6, 1, 2, 0), 47.25, 46.0])  # 5
    notes = wb.create_sheet("Notes")
    notes["A1"] = "Prices are provisional."
    path = folder / "price_sheet.xlsx"
    wb.save(path)
    return path


def generation_by_fuel_json(folder: Path) -> Path:
    """JSON object wrapping an array of records, one column per fuel (wide), UTC 'Z' timestamps."""
    records = [
        {"time": "2024-05-01T00:00:00Z", "zone": "FR", "solar": 0, "wind": 3500.5, "nuclear": 41000},
        {"time": "2024-05-01T01:00:00Z", "zone": "FR", "solar": 0, "wind": 3600, "nuclear": -1},
    ]
    path = folder / "generation_by_fuel.json"
    path.write_text(json.dumps({"source": "tso", "data": records}))
    return path


def bids_jsonl(folder: Path) -> Path:
    """JSON Lines bids with a broken line, an unknown side and a repeated bid id."""
    lines = [
        json.dumps(
            {
                "bid_id": "B1",
                "delivery_start": "2024-07-01 10:00",
                "zone": "NL",
                "asset_id": "BAT-1",
                "side": "sell",
                "price": 80.0,
                "quantity": 5,
            }
        ),  # 1
        '{"bid_id": "B2", "delivery_start": ',  # 2 invalid JSON
        json.dumps(
            {
                "bid_id": "B3",
                "delivery_start": "2024-07-01 11:00",
                "zone": "NL",
                "asset_id": "BAT-1",
                "side": "hold",
                "price": 81.0,
                "quantity": 5,
            }
        ),  # 3 unknown side
        json.dumps(
            {
                "bid_id": "B1",
                "delivery_start": "2024-07-01 12:00",
                "zone": "NL",
                "asset_id": "BAT-1",
                "side": "buy",
                "price": -10.0,
                "quantity": 2,
            }
        ),  # 4 duplicate bid id
        json.dumps(
            {
                "bid_id": "B4",
                "delivery_start": "2024-07-01 12:00",
                "zone": "NL",
                "asset_id": "PV-2",
                "side": "buy",
                "price": -10.0,
                "quantity": 2,
            }
        ),  # 5
    ]
    path = folder / "bids.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def weather_parquet(folder: Path) -> Path:
    """Parquet with a real timestamp type (UTC) and one impossible temperature."""
    table = pa.table(
        {
            "valid_time": pa.array(
                [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(3)], pa.timestamp("ms", tz="UTC")
            ),
            "region": ["NO1", "NO1", "NO1"],
            "temperature": [-3.5, 99.0, -4.0],  # row 2 impossible
            "wind_speed": [5.0, 6.0, 7.5],
            "ghi": [0.0, 0.0, 10.0],
        }
    )
    path = folder / "weather.parquet"
    pq.write_table(table, path)
    return path


def wide_zones_prices_csv(folder: Path) -> Path:
    """One column per zone, tab-separated, Excel serial dates in the time column."""
    lines = ["Date\tDE_LU\tFR\tNL", "45352\t60.1\t55\t", "45352.041666667\t61.2\t56\t58.8"]
    path = folder / "zone_prices.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def ambiguous_values_csv(folder: Path) -> Path:
    """Nothing says what 'value' is: held for an explicit mapping."""
    lines = ["time,area,value", "2024-02-01 00:00,SE3,12", "2024-02-01 01:00,SE3,13"]
    path = folder / "export_0001.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def mixed_dates_csv(folder: Path) -> Path:
    """A column mixing ISO, day-first dotted dates and a date that no format can read."""
    lines = [
        "timestamp;zone;price_mwh;currency;market",
        "2024-01-15 00:00;PL;400,5;PLN;DA",  # 2
        "15.01.2024 01:00;PL;401;PLN;DA",  # 3
        "2024-01-15T02:00:00;PL;402;PLN;day-ahead",  # 4
        "31.02.2024 03:00;PL;403;PLN;DA",  # 5 impossible date -> quarantine
        "2024-01-15 04:00;;404;PLN;DA",  # 6 missing zone -> quarantine
    ]
    path = folder / "pl_prices.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def zip_bomb_xlsx(folder: Path) -> Path:
    """An xlsx-shaped zip whose sheet inflates 1000:1."""
    path = folder / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/worksheets/sheet1.xml", b"\x00" * (50 * 1024 * 1024))
    return path


def nodal_prices_csv(folder: Path, *, name: str = "nodal.csv", rows: int = 1000) -> Path:
    """Clean hourly nodal prices (for idempotency and landing-folder tests)."""
    lines = ["datetime_utc,zone,pnode_name,market,lmp ($/MWh)"]
    for i in range(rows):
        lines.append(f"2024-01-{1 + i // 240:02d} {(i // 10) % 24:02d}:00:00,PJM,N{i % 10},DA,{20 + i % 7}.5")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def multiline_notes_csv(folder: Path) -> Path:
    """A valid CSV (CRLF, quoted header) whose "notes" cells hold line breaks; row numbers are the lines
    each record starts on."""
    lines = [
        '"timestamp","zone","load (MW)","notes"',  # 1 header
        "2024-01-01 00:00,NORTH,1000,ok",  # 2
        '2024-01-01 01:00,NORTH,1001,"unit 4 tripped\r\nback at 02:00"',  # 3-4
        '2024-01-01 02:00,NORTH,1002,"operator said ""check""\r\n\r\nlater"',  # 5-7
        "2024-01-01 03:00,NORTH,abc,plain",  # 8 unparseable load -> quarantine
        '2024-01-01 04:00,NORTH,1004,"two\r\nlines",extra',  # 9-10 five fields -> quarantine
        "2024-01-01 05:00,NORTH,1005,",  # 11
        '2024-01-01 06:00,NORTH,1006,"last\r\none"',  # 12-13
    ]
    path = folder / "load_with_notes.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def wide_hours_csv(folder: Path, name: str, header: list[str], rows: list[list[object]]) -> Path:
    """One row per day (and series) with one column per hour; None is an empty cell."""
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path
