"""CDC -> silver trading tables: ordering by LSN, late and re-delivered events, deletes, SCD-2 rows, increments."""

from __future__ import annotations

from datetime import UTC, datetime

from ingestion.silver.trading import build_trading_entity
from tests.silver.conftest import CDC_SCHEMA, append_bronze, bid_event, query


def t(text: str) -> datetime:
    return datetime.fromisoformat(f"2024-03-10T{text}").replace(tzinfo=UTC)


HISTORY_SQL = """SELECT bid_id, version, op, status, price, valid_from, valid_to, is_current, source_lsn
                 FROM silver.trading__bids_history ORDER BY bid_id, version"""
CURRENT_SQL = """SELECT bid_id, status, price, op, valid_from, source_lsn, org_id, delivery_start, updated_at
                 FROM silver.trading__bids ORDER BY 1"""
DELIVERY = datetime(2024, 3, 10, 5, tzinfo=UTC)


def test_cdc_history_handles_deletes_late_events_and_redelivery_incrementally(spark, lake, silver_db):
    append_bronze(
        lake,
        "cdc__bids",
        [
            bid_event("c", "B1", 100, "2024-03-10T10:00:00", 0),
            bid_event("u", "B1", 200, "2024-03-10T10:05:00", 1, status="accepted"),
            bid_event("c", "B2", 110, "2024-03-10T10:01:00", 2),
            bid_event("d", "B2", 300, "2024-03-10T10:10:00", 3),
            bid_event("t", "B2", 0, "2024-03-10T10:10:00", 4),  # Kafka tombstone after the delete: ignored
            bid_event("r", "B3", 50, "2024-03-10T09:00:00", 5, price=42.0),
            bid_event("d", "B9", 60, "2024-03-10T09:30:00", 6),  # delete of a key never seen created
        ],
        CDC_SCHEMA,
    )
    first = build_trading_entity(spark, lake, silver_db, "bids")
    assert (first.full_refresh, first.bronze_version, first.keys_touched, first.orphan_deletes) == (True, 0, 4, 1)
    assert query(silver_db, HISTORY_SQL) == [
        ("B1", 1, "c", "submitted", 50.0, t("10:00:00"), t("10:05:00"), False, 100),
        ("B1", 2, "u", "accepted", 50.0, t("10:05:00"), None, True, 200),
        ("B2", 1, "c", "submitted", 50.0, t("10:01:00"), t("10:10:00"), False, 110),
        # the delete is a zero-length version that keeps the last known values (and the org for RLS)
        ("B2", 2, "d", "submitted", 50.0, t("10:10:00"), t("10:10:00"), False, 300),
        ("B3", 1, "r", "submitted", 42.0, t("09:00:00"), None, True, 50),
    ]
    assert query(silver_db, CURRENT_SQL) == [
        ("B1", "accepted", 50.0, "u", t("10:05:00"), 200, "org_a", DELIVERY, t("10:05:00")),
        ("B3", "submitted", 42.0, "r", t("09:00:00"), 50, "org_a", DELIVERY, t("09:00:00")),
    ]
    untouched_before = query(silver_db, "SELECT xmin::text FROM silver.trading__bids_history WHERE bid_id = 'B3'")

    append_bronze(
        lake,
        "cdc__bids",
        [
            # late: an update committed between B1's create and its accept arrives after both
            bid_event("u", "B1", 150, "2024-03-10T10:03:00", 7, price=55.0),
            # re-delivery of B1's create on another partition/offset: counted once
            bid_event("c", "B1", 100, "2024-03-10T10:00:00", 3, partition=1),
            # out of order inside one batch: the update is read before the create
            bid_event("u", "B4", 400, "2024-03-10T11:00:00", 8, status="rejected"),
            bid_event("c", "B4", 390, "2024-03-10T10:59:00", 9),
            # B2 comes back after its delete
            bid_event("c", "B2", 500, "2024-03-10T12:00:00", 10, price=60.0),
        ],
        CDC_SCHEMA,
    )
    second = build_trading_entity(spark, lake, silver_db, "bids")
    assert (second.full_refresh, second.previous_version, second.bronze_version) == (False, 0, 1)
    assert (second.events_read, second.keys_touched) == (5, 3)
    expected_history = [
        ("B1", 1, "c", "submitted", 50.0, t("10:00:00"), t("10:03:00"), False, 100),
        ("B1", 2, "u", "submitted", 55.0, t("10:03:00"), t("10:05:00"), False, 150),
        ("B1", 3, "u", "accepted", 50.0, t("10:05:00"), None, True, 200),
        ("B2", 1, "c", "submitted", 50.0, t("10:01:00"), t("10:10:00"), False, 110),
        ("B2", 2, "d", "submitted", 50.0, t("10:10:00"), t("10:10:00"), False, 300),
        ("B2", 3, "c", "submitted", 60.0, t("12:00:00"), None, True, 500),
        ("B3", 1, "r", "submitted", 42.0, t("09:00:00"), None, True, 50),
        ("B4", 1, "c", "submitted", 50.0, t("10:59:00"), t("11:00:00"), False, 390),
        ("B4", 2, "u", "rejected", 50.0, t("11:00:00"), None, True, 400),
    ]
    assert query(silver_db, HISTORY_SQL) == expected_history
    assert [r[:3] for r in query(silver_db, CURRENT_SQL)] == [
        ("B1", "accepted", 50.0),
        ("B2", "submitted", 60.0),
        ("B3", "submitted", 42.0),
        ("B4", "rejected", 50.0),
    ]
    # the incremental run rewrote only the touched keys
    assert query(silver_db, "SELECT xmin::text FROM silver.trading__bids_history WHERE bid_id = 'B3'") == (
        untouched_before
    )
    assert query(silver_db, "SELECT bronze_version, keys_touched FROM ops.silver_watermarks "
                            "WHERE source = 'bronze.cdc__bids'") == [(1, 3)]

    # nothing new in bronze: a no-op; a full refresh reproduces the incremental result exactly
    third = build_trading_entity(spark, lake, silver_db, "bids")
    assert (third.events_read, third.keys_touched) == (0, 0)
    refreshed = build_trading_entity(spark, lake, silver_db, "bids", full_refresh=True)
    assert refreshed.full_refresh and refreshed.history_rows == len(expected_history)
    assert query(silver_db, HISTORY_SQL) == expected_history


def test_absent_bronze_table_leaves_silver_empty(spark, lake, silver_db):
    result = build_trading_entity(spark, lake, silver_db, "trades")
    assert result.bronze_version is None and result.history_rows == 0
    assert query(silver_db, "SELECT count(*) FROM silver.trading__trades_history") == [(0,)]


def test_every_cdc_source_table_has_a_silver_entity():
    """Gold and the topics name the trading tables by `CDC_SOURCE_TABLES`; silver builds one entity each."""
    from ingestion.cdc.topics import CDC_SOURCE_TABLES
    from ingestion.silver.trading import ENTITIES

    assert sorted(ENTITIES) == sorted(CDC_SOURCE_TABLES)
