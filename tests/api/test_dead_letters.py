"""GET /ingestion/dead-letters over dead letters written by the CDC library's own decoder and Delta writer."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from infra.lake import lake_from_settings
from ingestion.cdc.decode import BatchContext, RawRecords, decode_records
from ingestion.cdc.delta import BronzeTables
from ingestion.cdc.topics import DEAD_LETTERS_TABLE, route_for

RUN = uuid.uuid4().hex[:8]
BIDS = f"t{RUN}.public.bids"
TICKS = f"t{RUN}.market.ticks"


def _envelope(op: str, org: str, n: int) -> bytes:
    after = {"bid_id": f"b{n}", "org_id": org, "zone": "PJM", "price": 40.0 + n, "quantity_mw": 1.0}
    return json.dumps(
        {"op": op, "after": after, "before": None, "source": {"ts_ms": 1, "table": "bids"}}
    ).encode()


def _write(lake, topic: str, values: list[bytes]) -> None:
    raw = RawRecords(topic)
    for offset, value in enumerate(values):
        raw.partitions.append(0)
        raw.offsets.append(offset)
        raw.timestamps.append(1_735_689_600_000 + offset)
        raw.keys.append(f'{{"k":{offset}}}'.encode())
        raw.values.append(value)
    route = route_for(topic)
    decoded = decode_records(raw, route, {}, BatchContext(uuid.uuid4().hex, datetime.now(UTC), {0: 0}))
    assert decoded.dead_letters.num_rows == len(values)
    BronzeTables(lake).append(
        DEAD_LETTERS_TABLE, decoded.dead_letters, topic_offsets={(topic, 0): len(values) - 1}
    )


@pytest.fixture(scope="module")
def letters(api_settings):
    since = datetime.now(UTC) - timedelta(seconds=1)
    lake = lake_from_settings(api_settings)
    bids = [
        _envelope("x", "org_a", 1),
        _envelope("x", "org_b", 2),
        b'{"op": "c", "after": {',
        _envelope("x", "org_a", 3),
    ]
    _write(lake, BIDS, bids)
    _write(lake, TICKS, [b"not json at all"])
    return since, bids


def _all_pages(client, headers, since, limit: int) -> tuple[list[dict], int]:
    rows, cursor, withheld = [], None, None
    while True:
        params = {"since": since.isoformat(), "limit": limit} | ({"cursor": cursor} if cursor else {})
        resp = client.get("/api/v1/ingestion/dead-letters", headers=headers, params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        rows += page["data"]
        withheld = page["withheld"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, withheld


def test_dead_letters_are_paged_with_coordinates_reason_and_raw_bytes(client, auth, letters):
    since, bids = letters
    rows, withheld = _all_pages(client, auth("org_a", "analyst"), since, limit=1)
    got = sorted((r["topic"], r["partition"], r["offset"], r["reason_code"], r["org_id"]) for r in rows)
    assert got == sorted(
        [
            (BIDS, 0, 0, "unknown_op", "org_a"),
            (BIDS, 0, 3, "unknown_op", "org_a"),
            (TICKS, 0, 0, "invalid_json", None),
        ]
    )
    assert withheld == 1  # the broken envelope: whose it is cannot be told
    by_offset = {(r["topic"], r["offset"]): r for r in rows}
    assert base64.b64decode(by_offset[(BIDS, 3)]["raw"]) == bids[3]
    assert "unknown op 'x'" in by_offset[(BIDS, 0)]["reason"]
    assert base64.b64decode(by_offset[(TICKS, 0)]["raw"]) == b"not json at all"
    # Paging with one letter per page gives the same rows as one page.
    one_page, _ = _all_pages(client, auth("org_a", "admin"), since, limit=100)
    assert one_page == rows


def test_other_organizations_letters_and_roles(client, auth, letters):
    since, _ = letters
    rows, _ = _all_pages(client, auth("org_b", "admin"), since, limit=100)
    assert sorted((r["topic"], r["offset"], r["org_id"]) for r in rows) == [
        (TICKS, 0, None),
        (BIDS, 1, "org_b"),
    ]
    for role in ("trader", "viewer"):
        resp = client.get("/api/v1/ingestion/dead-letters", headers=auth("org_a", role))
        assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
    resp = client.get(
        "/api/v1/ingestion/dead-letters",
        headers=auth("org_a", "admin"),
        params={"topic": TICKS, "since": since.isoformat()},
    )
    assert [r["topic"] for r in resp.json()["data"]] == [TICKS]
    bad = client.get(
        "/api/v1/ingestion/dead-letters", headers=auth("org_a", "admin"), params={"cursor": "abc"}
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
