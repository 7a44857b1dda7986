"""Archived days read through the API as if hot: the retention job moves the fixture's gold days to the cold
tier (`infra.retention.archive_day`, the nightly job's own function), and every page, cursor and export then
answers byte for byte what it answered before, for each organization; a day rebuilt in hot storage after it was
archived is served from hot storage alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from infra.retention import archive_day, archived_days, policy_for, restore_day
from tests.api.conftest import DAY0, ORGS

V1 = "/api/v1"
ARCHIVED = ("gold.fct_prices_hourly", "gold.kpi_values")
DAYS = (DAY0.date(), (DAY0 + timedelta(days=1)).date())
# Only `from`: such reads are never cached, so each answer below is read again from the tables.
READS = (
    ("/prices", {"limit": "7"}),
    ("/prices", {"zone": "NP", "limit": "5"}),
    ("/kpis/avg_price", {"limit": "9"}),
    ("/kpis/pnl", {"limit": "3"}),
)


def _pages(client, headers: dict[str, str], path: str, params: dict[str, str]) -> list[bytes]:
    """Every page's body, following next_cursor from the first."""
    bodies, cursor = [], None
    query = {"from": (DAY0 - timedelta(days=2)).isoformat(), **params}
    while True:
        resp = client.get(f"{V1}{path}", params={**query, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Cache"] == "bypass"
        bodies.append(resp.content)
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return bodies
        assert len(bodies) < 100


def _answers(client, auth) -> dict[tuple, list[bytes]]:
    out: dict[tuple, list[bytes]] = {}
    for org in ORGS:
        headers = auth(org, "admin")
        for path, params in READS:
            out[(org, path, tuple(params.items()))] = _pages(client, headers, path, params)
            for fmt in ("csv", "parquet"):
                resp = client.get(
                    f"{V1}{path}",
                    params={"from": (DAY0 - timedelta(days=2)).isoformat(), **params, "format": fmt},
                    headers=headers,
                )
                assert resp.status_code == 200, resp.text
                out[(org, path, tuple(params.items()), fmt)] = [resp.content]
    return out


def _hot_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE market_date = ANY(%s)", (list(DAYS),)).fetchone()[0]


@pytest.fixture
def archived(api_database: str, api_settings) -> Iterator[str]:
    """The fixture's two days of prices and KPIs in the cold tier; back in hot storage afterwards."""
    archive_uri = api_settings.resolved_archive_uri
    yield archive_uri
    with psycopg.connect(api_database) as conn:
        left = [(t, d) for t, d, _, _ in archived_days(conn) if t in ARCHIVED]
    for table, day in left:
        restore_day(api_database, archive_uri, table, day)


def test_archived_days_answer_as_they_did_hot(client, auth, api_database, api_settings, archived) -> None:
    before = _answers(client, auth)
    assert any(b"org_b" in page for pages in before.values() for page in pages)  # the org-scoped rows are read

    for table in ARCHIVED:
        policy = policy_for(api_settings, table)
        for day in DAYS:
            assert archive_day(api_database, archived, policy, day).rows > 0
        assert _hot_rows(api_database, table) == 0

    after = _answers(client, auth)
    assert after.keys() == before.keys()
    for key, pages in before.items():
        assert after[key] == pages, f"{key} differs once archived"


def test_a_day_rebuilt_after_archiving_is_served_from_hot_storage_alone(
    client, auth, api_database, api_settings, archived
) -> None:
    headers = auth("org_a", "admin")
    before = _pages(client, headers, "/prices", {"limit": "10000"})
    with psycopg.connect(api_database) as conn:
        rebuilt = conn.execute(
            "SELECT * FROM gold.fct_prices_hourly WHERE market_date = %s ORDER BY ts_utc, zone", (DAYS[0],)
        ).fetchall()
    archive_day(api_database, archived, policy_for(api_settings, "gold.fct_prices_hourly"), DAYS[0])
    with psycopg.connect(api_database) as conn, conn.cursor() as cur:
        # What the day's next build writes: the whole day again, changed by a late correction.
        cur.executemany(
            "INSERT INTO gold.fct_prices_hourly VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*r[:5], r[5] + 1000.0, *r[6:]) for r in rebuilt],
        )
    after = _pages(client, headers, "/prices", {"limit": "10000"})
    rows_before, rows_after = json.loads(before[0])["data"], json.loads(after[0])["data"]
    assert len(rows_after) == len(rows_before)  # the archived copy of the day is not served beside the new build
    changed = [r for r in rows_after if r["price_avg"] >= 1000.0]
    assert len(changed) == len(rebuilt)
    assert {r["ts_utc"][:10] for r in changed} == {DAYS[0].isoformat()}

    # Restoring the superseded archive adds nothing: the hot build stays the day's only copy.
    assert restore_day(api_database, archived, "gold.fct_prices_hourly", DAYS[0]) == 0
    with psycopg.connect(api_database) as conn:
        conn.execute(
            "UPDATE gold.fct_prices_hourly SET price_avg = price_avg - 1000.0 WHERE market_date = %s", (DAYS[0],)
        )
    assert _pages(client, headers, "/prices", {"limit": "10000"}) == before
