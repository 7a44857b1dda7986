"""The analyst's gold tables through the API (routers/trading.py, routers/model_monitoring.py) against real
Postgres with fixture data (tests/api/analyst_fixtures.py): contents, cursor pages, field selection,
exports, permissions and tenancy."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from openpyxl import load_workbook

from tests.api.analyst_fixtures import BID_HOURS, bid_rows, position_rows, trade_rows
from tests.api.conftest import DAY0, window

V1 = "/api/v1"
TABLES = {
    "/bids": "bid_id",
    "/trades": "trade_id",
    "/positions": "net_position_mwh",
    "/anomalies": "score",
    "/backtests": "metrics",
    "/models/current": "model",
    "/models/selections": "model",
    "/drift": "drift_share",
}


def _all_pages(client, path: str, headers: dict, **params) -> list[dict]:
    rows, cursor = [], None
    for _ in range(100):
        page = client.get(f"{V1}{path}", params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["count"] == len(body["data"])
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("pagination did not end")


def test_bids_pages_are_the_orgs_bids_in_delivery_order(client, auth):
    rows = _all_pages(client, "/bids", auth("org_a", "analyst"), limit=5, **window())
    assert [r["bid_id"] for r in rows] == [b[0] for b in bid_rows("org_a", 0, DAY0)]
    first = rows[0]
    assert first["side"] == "sell" and first["status"] == "accepted" and first["cleared_quantity_mw"] == 1.0
    assert first["cash_flow"] == pytest.approx(30.0) and first["is_accepted"] is True
    only = client.get(
        f"{V1}/bids",
        params={"status": "rejected", "side": "sell", "fields": "bid_id,status"},
        headers=auth("org_a", "analyst"),
    ).json()
    assert only["count"] == BID_HOURS // 4 and all(set(r) == {"bid_id", "status"} for r in only["data"])
    assert {r["status"] for r in only["data"]} == {"rejected"}
    # `from`/`to` filter the delivery hour
    first_hours = {"from": DAY0.isoformat(), "to": DAY0.replace(hour=6).isoformat()}
    assert client.get(f"{V1}/bids", params=first_hours, headers=auth()).json()["count"] == 6


def test_trades_and_positions_match_the_marts_rules(client, auth):
    headers = auth("org_b", "trader")
    trades = _all_pages(client, "/trades", headers, limit=7)
    assert sorted(t["trade_id"] for t in trades) == sorted(t[0] for t in trade_rows("org_b", 1, DAY0))
    otc = client.get(f"{V1}/trades", params={"counterparty": "cp_1"}, headers=headers).json()["data"]
    assert [t["trade_id"] for t in otc] == ["org_b_otc_1"] and otc[0]["bid_id"] is None
    executing = client.get(f"{V1}/trades", params={"bid_id": "org_b_bid_00"}, headers=headers).json()["data"]
    assert [t["signed_quantity_mw"] for t in executing] == [-2.0]  # a sell of org B's 2 MW bid
    positions = _all_pages(client, "/positions", headers, zone="PJM", limit=4)
    expected = position_rows("org_b", 1, DAY0)
    assert [p["net_position_mwh"] for p in positions] == [e[6] for e in expected]
    assert {p["org_id"] for p in positions} == {"org_b"}


def test_model_monitoring_tables(client, auth):
    headers = auth("org_a", "viewer")  # market-level data: every role reads it
    spikes = client.get(f"{V1}/anomalies", params={**window(), "kind": "spike"}, headers=headers).json()
    assert [(r["zone"], r["score"]) for r in spikes["data"]] == [("PJM", 6.5), ("NP", 8.1)]
    backtests = client.get(f"{V1}/backtests", params={"zone": "PJM"}, headers=headers).json()["data"]
    assert [b["run_id"] for b in backtests] == ["bt_week0", "bt_week1"]
    assert backtests[0]["models"] == ["ensemble", "LEAR", "seasonal_naive"]
    assert backtests[1]["metrics"]["ensemble"]["mae"] == 3.5
    current = client.get(f"{V1}/models/current", headers=headers).json()["data"]
    assert [(m["zone"], m["model"], m["registry_version"]) for m in current] == [
        ("NP", "LEAR", "1"),
        ("PJM", "ensemble", "2"),  # the newer selection replaced LEAR
    ]
    history = client.get(f"{V1}/models/selections", params={"zone": "PJM"}, headers=headers).json()["data"]
    assert [m["model"] for m in history] == ["LEAR", "ensemble"]
    drift = client.get(f"{V1}/drift", headers=headers).json()["data"]
    assert {d["zone"]: (d["drift_share"], d["error_drift"]) for d in drift} == {
        "PJM": (0.75, True),
        "NP": (0.0, None),
    }
    assert "report_path" not in drift[0]  # a server path, not part of the served summary


@pytest.mark.parametrize("path", list(TABLES))
def test_every_table_exports_csv_parquet_and_xlsx(client, auth, path):
    headers = auth("org_a", "analyst")
    page = client.get(f"{V1}{path}", params={"limit": 10_000}, headers=headers).json()
    assert page["count"] > 0, path
    column = TABLES[path]
    exported = client.get(f"{V1}{path}", params={"format": "csv"}, headers=headers)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == page["count"]
    if column == "metrics":  # JSON columns are exported as JSON text
        assert json.loads(rows[0][column]) == page["data"][0][column]
    parquet = client.get(f"{V1}{path}", params={"format": "parquet"}, headers=headers)
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == page["count"] and column in table.column_names
    xlsx = client.get(f"{V1}{path}", params={"format": "xlsx", "fields": column}, headers=headers)
    sheet = load_workbook(io.BytesIO(xlsx.content), read_only=True).active
    assert sum(1 for _ in sheet.iter_rows()) == page["count"] + 1


def test_permissions_and_bad_input(client, auth):
    viewer = auth("org_a", "viewer")
    for path in ("/bids", "/trades", "/positions"):  # organization data needs org:read
        assert client.get(f"{V1}{path}", headers=viewer).status_code == 403
    assert client.get(f"{V1}/drift", params={"format": "csv"}, headers=viewer).status_code == 403  # export
    assert client.get(f"{V1}/bids").status_code == 401
    bad = client.get(f"{V1}/bids", params={"side": "hold"}, headers=auth()).json()
    assert bad["code"] == "validation_error" and "side" in json.dumps(bad["details"])
    unknown = client.get(f"{V1}/backtests", params={"fields": "run_id,secret"}, headers=auth()).json()
    assert unknown["code"] == "unknown_fields" and unknown["details"]["unknown"] == ["secret"]


def test_org_a_never_sees_org_b_trading_data(client, auth):
    for org, other in (("org_a", "org_b"), ("org_b", "org_a")):
        headers = auth(org, "admin")
        for path in ("/bids", "/trades", "/positions"):
            page = client.get(f"{V1}{path}", params={"limit": 10_000}, headers=headers).json()
            assert page["count"] > 0 and {r["org_id"] for r in page["data"]} == {org}, path
            export = client.get(f"{V1}{path}", params={"format": "csv"}, headers=headers).text
            assert other not in export, path
        # naming the other organization's rows finds nothing
        assert client.get(f"{V1}/bids", params={"bid_id": f"{other}_bid_00"}, headers=headers).json()["count"] == 0
        assert client.get(f"{V1}/trades", params={"bid_id": f"{other}_bid_00"}, headers=headers).json()["count"] == 0
