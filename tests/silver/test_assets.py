"""The silver Dagster assets: they load with the bronze keys as deps and materialize a market-day partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from tests.silver.conftest import FILES_PRICES_SCHEMA, append_bronze, file_row, query


def test_silver_assets_load_and_materialize_a_partition(spark, lake, silver_db):
    from assets import silver
    from assets.shared.resources import LakeResource, SparkResource, WarehouseResource

    assets = dg.load_assets_from_modules([silver])
    keys = {key for a in assets for key in a.keys}
    assert dg.AssetKey(["silver", "trading__bids_history"]) in keys
    assert dg.AssetKey(["silver", "quality__gaps"]) in keys
    market = next(a for a in assets if dg.AssetKey(["silver", "market__prices"]) in a.keys)
    assert dg.AssetKey(["bronze", "ticks__prices"]) in market.asset_deps[dg.AssetKey(["silver", "market__prices"])]

    uploaded = datetime(2024, 3, 12, tzinfo=UTC)
    rows = [
        file_row(datetime(2024, 3, 10, tzinfo=UTC) + timedelta(hours=i), "FR", 1, i, uploaded, node=None,
                 market="DA", interval_minutes=60, price=10.0 + i, currency="EUR")
        for i in range(30)
    ]
    append_bronze(lake, "files__prices", rows, FILES_PRICES_SCHEMA)
    result = dg.materialize(
        [market],
        partition_key="2024-03-10",
        resources={
            "spark": SparkResource(master="local[2]"),
            "lake": LakeResource(lake_uri=lake.root),
            "warehouse": WarehouseResource(database_url=silver_db),
        },
    )
    assert result.success
    # Paris day 2024-03-10 = 2024-03-09T23:00Z .. 2024-03-10T23:00Z: bronze from 00:00Z has 23 of its 24 hours
    assert query(silver_db, "SELECT count(*), min(market_date), max(market_date) FROM silver.market__prices") == [
        (23, datetime(2024, 3, 10).date(), datetime(2024, 3, 10).date())
    ]
    materialized = result.asset_materializations_for_node("silver_market")
    prices = next(m for m in materialized if m.asset_key == dg.AssetKey(["silver", "market__prices"]))
    assert prices.metadata["rows"].value == 23
