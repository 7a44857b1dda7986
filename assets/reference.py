"""Reference data: zones, nodes, organizations and assets seeded into `silver.ref__*` (group `reference`).

The seed data and the upsert are `ingestion.reference`; this module only runs it as a Dagster asset.
"""

import dagster as dg

from assets.shared import automation
from assets.shared.resources import WarehouseResource
from ingestion.reference import seed_reference_data

REFERENCE_TABLES = ("ref__organizations", "ref__zones", "ref__nodes", "ref__assets")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["silver", table],
            group_name="reference",
            description=f"Reference dimension silver.{table}.",
            automation_condition=automation.unpartitioned(),
        )
        for table in REFERENCE_TABLES
    ],
    description="Upsert the reference dimensions every layer joins to (idempotent); built once by the "
    "automation when never materialized, re-run by hand after editing the seeds.",
)
def reference_data(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    with warehouse.connect() as conn:
        counts = seed_reference_data(conn)
    context.log.info(f"seeded reference data: {counts}")
    by_table = {
        "ref__organizations": counts["organizations"],
        "ref__zones": counts["zones"],
        "ref__nodes": counts["nodes"],
        "ref__assets": counts["assets"],
    }
    for table in REFERENCE_TABLES:
        yield dg.MaterializeResult(asset_key=["silver", table], metadata={"rows": by_table[table]})


defs = dg.Definitions(assets=[reference_data])
