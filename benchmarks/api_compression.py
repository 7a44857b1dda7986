"""What gzip costs and saves per API response: the app's GZip layer (starlette's middleware with the
settings `serving_api.app` uses, `ApiOptions.gzip_level`) around a JSON page of 1,000 hourly prices, as the
API serializes it, and around a streamed CSV export of 100,000 rows in the API's chunk size. Prints bytes on
the wire, compression ratio, CPU and wall time per response (level 9, starlette's default, beside it) and the
load average; `python -m benchmarks.api_compression`. Needs no database: the response bodies are built here
with the API's own encoders, and the middleware runs in-process on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.responses import Response, StreamingResponse

from benchmarks.harness import load_average
from serving_api import exports
from serving_api.state import ApiOptions

PAGE_ROWS = 1000
EXPORT_ROWS = 100_000
REPEATS = 15


def _price_rows(n: int) -> list[tuple]:
    rng = random.Random(7)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        (
            "PJM",
            start + timedelta(hours=i),
            (start + timedelta(hours=i)).date(),
            "DA",
            "USD",
            round(30 + rng.gauss(0, 8), 2),
            round(20 + rng.gauss(0, 5), 2),
            round(45 + rng.gauss(0, 9), 2),
            12,
        )
        for i in range(n)
    ]


COLUMNS = ["zone", "ts_utc", "market_date", "market", "currency", "price_avg", "price_min", "price_max", "n_obs"]


def _page_body(rows: list[tuple]) -> bytes:
    data = [
        {c: (v.isoformat() if hasattr(v, "isoformat") else v) for c, v in zip(COLUMNS, r, strict=True)} for r in rows
    ]
    return json.dumps({"data": data, "next_cursor": None, "count": len(data)}, separators=(",", ":")).encode()


async def _measure(app, gzip: bool) -> tuple[int, float, float]:
    """(bytes sent, CPU seconds, wall seconds) of one response through `app`."""
    sent = 0

    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected (a streaming response listens for this)
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            sent += len(message.get("body", b""))

    headers = [(b"accept-encoding", b"gzip")] if gzip else []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
    cpu, wall = time.process_time(), time.perf_counter()
    await app(scope, receive, send)
    return sent, time.process_time() - cpu, time.perf_counter() - wall


async def main() -> None:
    options = ApiOptions()
    page = _page_body(_price_rows(PAGE_ROWS))
    export_rows = _price_rows(EXPORT_ROWS)
    chunk = options.export_chunk_rows

    async def page_app(scope, receive, send) -> None:
        await Response(page, media_type="application/json")(scope, receive, send)

    async def export_app(scope, receive, send) -> None:
        async def chunks() -> AsyncIterator[list[tuple]]:
            for i in range(0, len(export_rows), chunk):
                yield export_rows[i : i + chunk]

        body = exports.csv_bytes(COLUMNS, chunks())
        await StreamingResponse(body, media_type=exports.MEDIA_TYPES["csv"])(scope, receive, send)

    print(f"gzip per response ({load_average()}); {REPEATS} repeats, median")
    print(f"{'response':<34}{'level':>6}{'bytes':>12}{'ratio':>8}{'cpu ms':>9}{'wall ms':>9}")
    for name, inner in (
        (f"JSON page, {PAGE_ROWS} prices", page_app),
        (f"CSV export, {EXPORT_ROWS:,} rows", export_app),
    ):
        baseline = None
        for level in (None, options.gzip_level, 9):
            app = (
                inner
                if level is None
                else GZipMiddleware(
                    inner,
                    minimum_size=options.gzip_min_bytes,
                    compresslevel=level,
                    exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, *exports.ALREADY_COMPRESSED_EXPORTS),
                )
            )
            runs = sorted([await _measure(app, level is not None) for _ in range(REPEATS)], key=lambda r: r[2])
            size, cpu, wall = runs[len(runs) // 2]
            baseline = baseline or size
            print(
                f"{name:<34}{level or '-':>6}{size:>12,}{baseline / size:>7.1f}x{cpu * 1000:>9.2f}{wall * 1000:>9.2f}"
            )
    print(f"({load_average()})")


if __name__ == "__main__":
    asyncio.run(main())
