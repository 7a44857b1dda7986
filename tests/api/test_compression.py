"""GZip on the wire (a real uvicorn server, raw bytes read with httpx): large JSON pages and cache hits are
compressed for clients that accept it, small answers are not, CSV exports stay streamed (each chunk arrives
compressed and decodable on its own), Parquet and Excel pass through."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import pytest

from tests.api.analyst_fixtures import serve_api
from tests.api.conftest import window

V1 = "/api/v1"


@pytest.fixture(scope="module")
def live(api_settings, api_database):
    from serving_api.state import ApiOptions

    # Small export chunks, so an export of the fixture rows is several chunks on the wire.
    options = ApiOptions(user_rate_limit_per_minute=100_000, login_max_failures_per_ip=100_000, export_chunk_rows=50)
    yield from serve_api(api_settings, options)


def _raw_get(base_url: str, path: str, headers: dict, params: dict | None = None, gzip_ok: bool = True):
    """(response, raw body chunks as they arrived); nothing decoded by httpx."""
    sent = {**headers, "Accept-Encoding": "gzip" if gzip_ok else "identity"}
    with (
        httpx.Client(base_url=base_url, timeout=30) as http,
        http.stream("GET", path, params=params, headers=sent) as resp,
    ):
        chunks = list(resp.iter_raw())
    return resp, chunks


def test_large_pages_and_cache_hits_are_gzipped_small_answers_are_not(live, auth):
    _, base_url = live
    headers = auth("org_a", "analyst")
    params = {**window(), "zone": "PJM"}  # a past window: cacheable
    plain, plain_chunks = _raw_get(base_url, f"{V1}/prices", headers, params, gzip_ok=False)
    assert "content-encoding" not in plain.headers
    body = b"".join(plain_chunks)
    assert len(body) > 1024 and json.loads(body)["count"] == 48
    for expected_cache in ("miss", "hit"):
        resp, chunks = _raw_get(base_url, f"{V1}/prices", headers, params)
        assert resp.headers["content-encoding"] == "gzip" and resp.headers["x-cache"] in (expected_cache, "hit")
        assert "accept-encoding" in resp.headers["vary"].lower()
        compressed = b"".join(chunks)
        assert int(resp.headers["content-length"]) == len(compressed) < len(body) / 3
        assert gzip.decompress(compressed) == body
    small, small_chunks = _raw_get(base_url, f"{V1}/zones", headers)
    assert "content-encoding" not in small.headers and len(b"".join(small_chunks)) < 1024


def test_csv_exports_stay_streamed_and_binary_exports_pass_through(live, auth):
    _, base_url = live
    headers = auth("org_a", "analyst")
    params = {**window(), "granularity": "5min", "format": "csv"}  # 288 rows: six chunks of 50
    _, plain_chunks = _raw_get(base_url, f"{V1}/prices", headers, params, gzip_ok=False)
    resp, chunks = _raw_get(base_url, f"{V1}/prices", headers, params)
    assert resp.headers["content-encoding"] == "gzip" and "content-length" not in resp.headers
    assert resp.headers.get("transfer-encoding") == "chunked"
    # Each chunk is flushed: the first decodes to the CSV header before the rest has arrived.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert decoder.decompress(chunks[0]).startswith(b"node,zone,ts_utc")
    assert gzip.decompress(b"".join(chunks)) == b"".join(plain_chunks)
    for fmt in ("parquet", "xlsx"):
        binary, binary_chunks = _raw_get(base_url, f"{V1}/bids", headers, {"format": fmt})
        assert binary.status_code == 200 and "content-encoding" not in binary.headers, fmt
        assert b"".join(binary_chunks)[:4] in (b"PAR1", b"PK\x03\x04")
