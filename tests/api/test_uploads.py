"""POST/GET /uploads through the running app: real files land in the lake, bad rows are quarantined with
their row numbers and reasons, and every upload stays inside its organization."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from infra.lake import lake_from_settings
from serving_api.routers.uploads import uploads_dir

# A day of its own per run, so the same database (a real server) never sees identical content twice.
DAY = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(300))
D = DAY.strftime("%Y-%m-%d")


def _landed(api_settings, table: str, upload_id: int) -> list[dict]:
    rows = DeltaTable(lake_from_settings(api_settings).table_uri("bronze", table)).to_pyarrow_table()
    return sorted((r for r in rows.to_pylist() if r["_upload_id"] == upload_id), key=lambda r: r["ts_utc"])


def _post(client, headers, name: str, content: bytes):
    return client.post("/api/v1/uploads", headers=headers, files={"file": (name, content)})


def _prices_csv() -> bytes:
    return (
        "timestamp,zone,market,price (EUR/MWh)\n"
        f"{D} 00:00,NP,DA,31.5\n"  # row 2
        f"{D} 01:00,NP,DA,abc\n"  # row 3: not a number
        f"{D} 02:00,,DA,33.0\n"  # row 4: no zone
        f"{D} 03:00,NP,DA,34.25\n"  # row 5
    ).encode()


def _reasons(client, headers, upload_id: int) -> list[tuple]:
    rows, cursor = [], None
    while True:
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/api/v1/uploads/{upload_id}/quarantine", headers=headers, params=params).json()
        rows += [(r["sheet"], r["row_number"], r["reason"]) for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


@pytest.fixture(scope="module")
def csv_upload(client, auth):
    resp = _post(client, auth("org_a", "trader"), "prices.csv", _prices_csv())
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_csv_lands_good_rows_and_quarantines_bad_ones_with_row_and_reason(
    client, auth, api_settings, csv_upload
):
    up = csv_upload
    assert (up["status"], up["format"], up["dataset"]) == ("landed", "csv", "prices")
    assert (up["rows_read"], up["rows_landed"], up["rows_quarantined"]) == (4, 2, 2)
    assert up["mapping"]["columns"]["price"] == "price (EUR/MWh)" and up["mapping_confidence"] >= 0.7
    landed = _landed(api_settings, "files__prices", up["id"])
    assert [(r["ts_utc"], r["zone"], r["price"], r["_row_number"]) for r in landed] == [
        (DAY, "NP", 31.5, 2),
        (DAY + timedelta(hours=3), "NP", 34.25, 5),
    ]
    assert all(r["_org_id"] == "org_a" for r in landed)
    assert _reasons(client, auth("org_a", "analyst"), up["id"]) == [
        (None, 3, "unparseable number in price: 'abc'"),
        (None, 4, "missing zone"),
    ]
    status = client.get(f"/api/v1/uploads/{up['id']}", headers=auth("org_a", "analyst")).json()
    assert (status["status"], status["rows_landed"], status["profile"]["rows_landed"]) == ("landed", 2, 2)
    assert "stored_path" not in status
    audit = client.get("/api/v1/audit", headers=auth("org_a", "admin")).json()
    assert any(a["action"] == "upload.create" and a["target"] == str(up["id"]) for a in audit)


def test_xlsx_upload_lands_and_quarantines_by_sheet_row(client, auth, api_settings):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "load"
    ws.append(["datetime_utc", "zone", "load (MW)"])
    ws.append([f"{D} 00:00", "PJM", 9000.5])  # row 2
    ws.append([f"{D} 01:00", "PJM", "n/a"])  # row 3: no load
    ws.append([f"{D} 02:00", "PJM", 9100])  # row 4
    buf = io.BytesIO()
    wb.save(buf)
    resp = _post(client, auth("org_a", "trader"), "load.xlsx", buf.getvalue())
    assert resp.status_code == 201, resp.text
    up = resp.json()
    assert (up["status"], up["format"], up["dataset"]) == ("landed", "xlsx", "load")
    assert (up["rows_read"], up["rows_landed"], up["rows_quarantined"]) == (3, 2, 1)
    landed = _landed(api_settings, "files__load", up["id"])
    assert [(r["ts_utc"], r["load_mw"]) for r in landed] == [
        (DAY, 9000.5),
        (DAY + timedelta(hours=2), 9100.0),
    ]
    assert _reasons(client, auth("org_a", "trader"), up["id"]) == [("load", 3, "missing load_mw")]


def test_jsonl_upload_quarantines_broken_json_and_unknown_side(client, auth, api_settings):
    def bid(n: int, hour: int, side: str) -> str:
        return json.dumps(
            {
                "bid_id": f"B{n}",
                "delivery_start": f"{D} {hour:02d}:00",
                "zone": "PJM",
                "asset_id": "A1",
                "side": side,
                "price": 80.0 + n,
                "quantity_mw": 5,
            }
        )

    lines = [bid(1, 10, "sell"), '{"bid_id": "B2", "delivery_start": ', bid(3, 11, "hold"), bid(4, 12, "buy")]
    resp = _post(client, auth("org_a", "admin"), "bids.jsonl", ("\n".join(lines) + "\n").encode())
    assert resp.status_code == 201, resp.text
    up = resp.json()
    assert (up["status"], up["format"], up["dataset"]) == ("landed", "jsonl", "bids")
    assert (up["rows_read"], up["rows_landed"], up["rows_quarantined"]) == (4, 2, 2)
    landed = _landed(api_settings, "files__bids", up["id"])
    assert [(r["bid_id"], r["side"], r["price"]) for r in landed] == [
        ("B1", "sell", 81.0),
        ("B4", "buy", 84.0),
    ]
    assert _reasons(client, auth("org_a", "admin"), up["id"]) == [
        (None, 2, "invalid JSON: Expecting value"),
        (None, 3, "unknown side 'hold' (expected buy or sell)"),
    ]


def test_same_content_again_is_a_duplicate_and_lands_nothing(client, auth, api_settings, csv_upload):
    resp = _post(client, auth("org_a", "trader"), "renamed.csv", _prices_csv())
    assert resp.status_code == 201, resp.text
    dup = resp.json()
    assert (dup["status"], dup["duplicate_of"]) == ("duplicate", csv_upload["id"])
    assert str(csv_upload["id"]) in dup["error"]
    assert _landed(api_settings, "files__prices", dup["id"]) == []
    assert len(_landed(api_settings, "files__prices", csv_upload["id"])) == 2


def test_ambiguous_file_is_held_then_lands_with_an_explicit_mapping(client, auth, api_settings):
    content = f"time,area,value\n{D} 00:00,SE3,12\n{D} 01:00,SE3,13\n".encode()
    resp = _post(client, auth("org_a", "trader"), "export_0001.csv", content)
    assert resp.status_code == 201, resp.text
    held = resp.json()
    assert held["status"] == "held_for_mapping" and held["mapping_confidence"] < 0.7
    assert held["rows_landed"] is None and held["error"]
    url = f"/api/v1/uploads/{held['id']}/mapping"
    good = {"dataset": "load", "columns": {"ts_utc": "time", "zone": "area", "load_mw": "value"}}

    assert client.post(url, headers=auth("org_a", "viewer"), json=good).status_code == 403
    bad = client.post(url, headers=auth("org_a", "trader"), json={**good, "columns": {"load_mw": "nope"}})
    assert bad.status_code == 422 and "not in the file" in bad.json()["message"]

    resp = client.post(url, headers=auth("org_a", "trader"), json={**good, "timezone": "Europe/Stockholm"})
    assert resp.status_code == 200, resp.text
    final = resp.json()
    assert (final["status"], final["rows_landed"], final["mapping"]["source"]) == ("landed", 2, "explicit")
    landed = _landed(api_settings, "files__load", held["id"])
    local = datetime.combine(DAY.date(), datetime.min.time(), ZoneInfo("Europe/Stockholm"))
    assert [(r["ts_utc"], r["load_mw"]) for r in landed] == [
        (local.astimezone(UTC), 12.0),
        ((local + timedelta(hours=1)).astimezone(UTC), 13.0),
    ]
    again = client.post(url, headers=auth("org_a", "trader"), json=good)
    assert again.status_code == 409 and "landed" in again.json()["message"]


@pytest.fixture(scope="module")
def small_limit_client(api_settings):
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(
        api_settings.model_copy(update={"upload_max_bytes": 1000}),
        ApiOptions(user_rate_limit_per_minute=100_000),
    )
    with TestClient(app) as c:
        yield c


def test_oversized_upload_is_413_and_nothing_is_kept(small_limit_client, auth, api_settings):
    headers = auth("org_a", "trader")
    body = b"timestamp,zone,price\n" + f"{D} 00:00,NP,1.0\n".encode() * 200
    resp = _post(small_limit_client, headers, "big.csv", body)
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large" and "1,000-byte" in resp.json()["message"]

    # Without a Content-Length (chunked), the stream is cut off at the limit while it is written.
    boundary = "xyzzy"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'.encode(),
        *[body[i : i + 256] for i in range(0, len(body), 256)],
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    resp = small_limit_client.post(
        "/api/v1/uploads",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=iter(parts),
    )
    assert resp.status_code == 413, resp.text
    spool = api_settings.home_dir / "uploads" / ".api-spool"
    assert not any(spool.iterdir())


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("prices.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "binary content"),
        ("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, "legacy .xls"),
        ("empty.csv", b"", "empty file"),
    ],
)
def test_content_that_is_no_accepted_type_is_415(client, auth, name, content, fragment):
    resp = _post(client, auth("org_a", "trader"), name, content)
    assert resp.status_code == 415, resp.text
    assert resp.json()["code"] == "rejected_file" and fragment in resp.json()["message"]


def test_request_that_is_not_multipart_is_415_and_missing_field_is_422(client, auth):
    headers = auth("org_a", "trader")
    resp = client.post("/api/v1/uploads", headers=headers, content=b"a,b\n1,2\n")
    assert resp.status_code == 415 and resp.json()["code"] == "unsupported_media_type"
    resp = client.post("/api/v1/uploads", headers=headers, files={"other": ("x.csv", b"a,b\n1,2\n")})
    assert resp.status_code == 422 and resp.json()["code"] == "missing_file"
    assert (
        client.post(
            "/api/v1/uploads", headers=auth("org_a", "analyst"), files={"file": ("x", b"a")}
        ).status_code
        == 403
    )


def test_big_file_is_accepted_with_202_and_processed_in_the_background(
    client, auth, api_settings, monkeypatch
):
    from serving_api.routers import uploads as uploads_router

    monkeypatch.setattr(uploads_router, "INLINE_MAX_BYTES", 0)
    content = f"timestamp,zone,market,price (EUR/MWh)\n{D} 05:00,NP,DA,40.0\n{D} 06:00,NP,DA,41.0\n".encode()
    resp = _post(client, auth("org_a", "trader"), "later.csv", content)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "received"
    # The TestClient returns once the background task has run.
    status = client.get(f"/api/v1/uploads/{resp.json()['id']}", headers=auth("org_a", "trader")).json()
    assert (status["status"], status["rows_landed"], status["rows_quarantined"]) == ("landed", 2, 0)


def test_an_upload_stranded_before_processing_is_finished_by_the_next_identical_upload(
    client, auth, api_settings, api_database, tmp_path
):
    from ingestion.files import service

    content = f"timestamp,zone,market,price (EUR/MWh)\n{D} 07:00,NP,DA,44.0\n{D} 08:00,NP,DA,45.5\n".encode()
    path = tmp_path / "stranded.csv"
    path.write_bytes(content)
    # Registered, then the worker died before processing: the upload is stuck in `received`.
    stranded = service.receive_upload(
        path, "stranded.csv", "org_a", database_url=api_database, storage_dir=uploads_dir(api_settings)
    )
    assert stranded.status == "received"

    resp = _post(client, auth("org_a", "trader"), "again.csv", content)
    assert resp.status_code == 201, resp.text
    assert (resp.json()["status"], resp.json()["duplicate_of"]) == ("duplicate", stranded.upload_id)
    original = client.get(f"/api/v1/uploads/{stranded.upload_id}", headers=auth("org_a", "trader")).json()
    assert (original["status"], original["rows_landed"]) == ("landed", 2)
    assert [r["price"] for r in _landed(api_settings, "files__prices", stranded.upload_id)] == [44.0, 45.5]
    assert _landed(api_settings, "files__prices", resp.json()["id"]) == []


def test_another_organization_cannot_see_or_map_the_upload(client, auth, csv_upload):
    uid = csv_upload["id"]
    b = auth("org_b", "admin")
    for path in (f"/api/v1/uploads/{uid}", f"/api/v1/uploads/{uid}/quarantine"):
        resp = client.get(path, headers=b)
        assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    resp = client.post(f"/api/v1/uploads/{uid}/mapping", headers=b, json={"dataset": "prices"})
    assert resp.status_code == 404
    listed = client.get("/api/v1/uploads", headers=b, params={"limit": 1000}).json()["data"]
    assert uid not in [u["id"] for u in listed] and all(u["org_id"] == "org_b" for u in listed)
    assert listed and all("stored_path" not in u for u in listed)
    # The same public file is org B's own upload, not a duplicate of org A's.
    resp = _post(client, auth("org_b", "trader"), "prices.csv", _prices_csv())
    assert resp.status_code == 201 and resp.json()["status"] == "landed"
    assert resp.json()["org_id"] == "org_b"


def test_hour_numbering_of_a_dst_day_is_taken_from_the_mapping(client, auth, api_settings):
    # 2024-03-31 has 23 hours in Europe/Berlin; the row fills HE01..HE24, so only a mapping can say whether
    # HE03 (skipped by the clock) or HE24 is the extra value. The zone keeps the content new on every run.
    zone = f"DE-{random.randrange(10**9)}"
    header = "Date,Zone," + ",".join(f"HE{h:02d}" for h in range(1, 25))
    content = f"{header}\n2024-03-31,{zone}," + ",".join(str(h) for h in range(1, 25)) + "\n"
    resp = _post(client, auth("org_a", "trader"), "spot_export.csv", content.encode())
    assert resp.status_code == 201, resp.text
    held = resp.json()
    assert held["status"] == "held_for_mapping", held
    mapping = {
        "dataset": "prices",
        "layout": "wide_hours",
        "date_column": "Date",
        "columns": {"zone": "Zone"},
        "constants": {"market": "DA", "currency": "EUR"},
        "wide_columns": {f"HE{h:02d}": str(h) for h in range(1, 25)},
        "wide_field": "hour",
        "value_field": "price",
        "timezone": "Europe/Berlin",
        "hour_numbering": "clock",
    }
    resp = client.post(f"/api/v1/uploads/{held['id']}/mapping", headers=auth("org_a", "trader"), json=mapping)
    assert resp.status_code == 200, resp.text
    final = resp.json()
    assert (final["status"], final["rows_landed"], final["rows_quarantined"]) == ("landed", 23, 1)
    landed = _landed(api_settings, "files__prices", held["id"])
    midnight = datetime(2024, 3, 30, 23, tzinfo=UTC)
    assert [(r["ts_utc"], r["price"]) for r in landed] == [
        (midnight + timedelta(hours=h - 1 if h < 3 else h - 2), float(h)) for h in range(1, 25) if h != 3
    ]
    assert _reasons(client, auth("org_a", "analyst"), held["id"]) == [
        (None, 2, "hour ending 3 (column HE03) does not exist on 2024-03-31: the clocks skip that hour "
         "(23-hour day in Europe/Berlin)")
    ]  # fmt: skip
