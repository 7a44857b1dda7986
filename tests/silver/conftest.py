"""Silver test helpers: bronze Delta tables written with delta-rs exactly as the contract shapes them, and a
clean silver schema with a few seeded zones for each test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from infra.db import connect

TS = pa.timestamp("us", tz="UTC")
ZONES = [
    # zone, name, market, iso, timezone, currency, lat, lon, floor, cap
    ("PJM", "PJM Interconnection", "PJM", "PJM", "America/New_York", "USD", 39.9, -75.2, -1000.0, 3700.0),
    ("FR", "France", "EPEX", "FR", "Europe/Paris", "EUR", 48.8, 2.3, -500.0, 4000.0),
    ("IEX_N", "IEX North", "IEX", "IEX", "Asia/Kolkata", "INR", 28.6, 77.2, 0.0, 10000.0),
]
SILVER_TABLES = [
    "market__prices", "market__price_revisions", "market__load", "market__generation", "market__weather",
    "quality__gaps", "trading__bids", "trading__bids_history", "trading__trades", "trading__trades_history",
    "trading__assets", "trading__assets_history", "trading__market_orders", "trading__market_orders_history",
]

BID_FIELDS = [
    pa.field("bid_id", pa.string()), pa.field("org_id", pa.string()), pa.field("asset_id", pa.string()),
    # the CDC decoder keeps Debezium's representations: ISO-8601 text and epoch microseconds
    pa.field("zone", pa.string()), pa.field("delivery_start", pa.string()), pa.field("side", pa.string()),
    pa.field("price", pa.float64()), pa.field("quantity_mw", pa.float64()), pa.field("status", pa.string()),
    pa.field("cleared_quantity_mw", pa.float64()), pa.field("cleared_price", pa.float64()),
    pa.field("updated_at", pa.int64()),
]
CDC_SCHEMA = pa.schema(
    [
        pa.field("op", pa.string()), pa.field("key", pa.string()), pa.field("source_ts_ms", pa.int64()),
        pa.field("source_lsn", pa.int64()), pa.field("source_tx_id", pa.int64()),
        pa.field("source_table", pa.string()), pa.field("before_json", pa.string()),
        pa.field("after_json", pa.string()), pa.field("payload_raw", pa.string()),
        *BID_FIELDS,
        pa.field("_topic", pa.string()), pa.field("_partition", pa.int32()), pa.field("_offset", pa.int64()),
        pa.field("_ingested_at", TS), pa.field("_batch_id", pa.string()),
    ]
)


@pytest.fixture
def silver_db(database_url: str) -> Iterator[str]:
    """The migrated test database with empty silver tables, no watermarks and the seeded zones."""
    with connect(database_url) as conn:
        conn.execute("TRUNCATE " + ", ".join(f"silver.{t}" for t in SILVER_TABLES))
        conn.execute("DELETE FROM ops.silver_watermarks")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO silver.ref__zones VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (zone) DO NOTHING",
                ZONES,
            )
    yield database_url


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def bid_event(
    op: str,
    bid_id: str,
    lsn: int,
    at: str,
    offset: int,
    *,
    status: str = "submitted",
    price: float = 50.0,
    org_id: str = "org_a",
    partition: int = 0,
) -> dict:
    """One bronze cdc__bids row as the CDC ingester writes it (after columns NULL for deletes/tombstones)."""
    after = None
    if op in ("c", "u", "r"):
        after = {
            "bid_id": bid_id, "org_id": org_id, "asset_id": "bat1", "zone": "PJM",
            "delivery_start": "2024-03-10T05:00:00Z", "side": "sell", "price": price,
            "quantity_mw": 10.0, "status": status, "cleared_quantity_mw": None, "cleared_price": None,
            "updated_at": ms(at) * 1000,
        }
    row = {
        "op": op,
        "key": json.dumps({"bid_id": bid_id}),
        "source_ts_ms": ms(at) if op != "t" else None,
        "source_lsn": lsn if op != "t" else None,
        "source_tx_id": lsn // 10 if op != "t" else None,
        "source_table": "bids",
        "before_json": json.dumps({"bid_id": bid_id}) if op == "d" else None,
        "after_json": json.dumps(after, default=str) if after else None,
        "payload_raw": "{}",
        "_topic": "optibid.public.bids",
        "_partition": partition,
        "_offset": offset,
        "_ingested_at": datetime(2024, 3, 11, tzinfo=UTC),
        "_batch_id": "b1",
    }
    for f in BID_FIELDS:
        row[f.name] = after[f.name] if after else None
    return row


def append_bronze(lake, name: str, rows: list[dict], schema: pa.Schema) -> None:
    """Append `rows` to bronze table `name` (one new Delta version)."""
    write_deltalake(lake.table_uri("bronze", name), pa.Table.from_pylist(rows, schema=schema), mode="append")


def query(database_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


FILE_LINEAGE = [
    pa.field("source_tz", pa.string()), pa.field("_upload_id", pa.int64()), pa.field("_file_name", pa.string()),
    pa.field("_row_number", pa.int64()), pa.field("_sheet", pa.string()), pa.field("_org_id", pa.string()),
    pa.field("_ingested_at", TS), pa.field("_batch_id", pa.string()),
]
FILES_PRICES_SCHEMA = pa.schema(
    [
        pa.field("ts_utc", TS), pa.field("zone", pa.string()), pa.field("node", pa.string()),
        pa.field("market", pa.string()), pa.field("interval_minutes", pa.int32()), pa.field("price", pa.float64()),
        pa.field("currency", pa.string()), *FILE_LINEAGE,
    ]
)
FILES_LOAD_SCHEMA = pa.schema(
    [
        pa.field("ts_utc", TS), pa.field("zone", pa.string()), pa.field("interval_minutes", pa.int32()),
        pa.field("load_mw", pa.float64()), *FILE_LINEAGE,
    ]
)
TICKS_SCHEMA = pa.schema(
    [
        pa.field("zone", pa.string()), pa.field("node", pa.string()), pa.field("ts_utc", TS),
        pa.field("market", pa.string()), pa.field("interval_minutes", pa.int32()), pa.field("price", pa.float64()),
        pa.field("currency", pa.string()), pa.field("_topic", pa.string()), pa.field("_partition", pa.int32()),
        pa.field("_offset", pa.int64()), pa.field("_ingested_at", TS), pa.field("_batch_id", pa.string()),
    ]
)


def file_row(ts: datetime, zone: str, upload_id: int, row_number: int, ingested_at: datetime, **values) -> dict:
    """One bronze files__* row from upload `upload_id` (org_a's file)."""
    return {
        "ts_utc": ts, "zone": zone, **values, "source_tz": "UTC", "_upload_id": upload_id,
        "_file_name": f"upload{upload_id}.csv", "_row_number": row_number, "_sheet": None, "_org_id": "org_a",
        "_ingested_at": ingested_at, "_batch_id": f"batch{upload_id}",
    }
