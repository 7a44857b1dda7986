"""BI export: gold replicated to ClickHouse for BI, and the BI access layer on the gold tables.

Thin wrappers over `ingestion.bi` (the replication, parity queries and BI roles belong there): one
daily-partitioned asset `["clickhouse", <table>]` per table of the registry (`ingestion.bi.tables.TABLES`),
downstream of the dbt asset `["gold", <table>]`, that replaces the day in ClickHouse (`replicate_partition`:
idempotent, re-running a day never duplicates it; a day retention archived is replicated from the cold
tier, `OPTIBID_ARCHIVE_URI`, so a backfill keeps it), with a blocking check of row-count parity and grain
uniqueness; and `["bi", "access"]`, which re-creates the `bi.*` views, comments, grants and
row-level-security policies that a dbt rebuild of the gold tables drops. Exports share the
`clickhouse_export` pool so a backfill does not flood the server. Both follow gold by themselves: a day's
export after each rebuild of its gold day, the access layer after any gold rebuild.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from assets.shared import automation
from assets.shared.partitions import daily_partitions, market_date_window
from assets.shared.resources import ClickHouseResource, WarehouseResource
from infra.clickhouse import ClickHouseNotInstalledError, clickhouse_server_command
from infra.settings import get_settings
from ingestion.bi.access import ORG_ID, BiRoles, ensure_bi_roles
from ingestion.bi.clickhouse import duplicate_key_count, replicate_partition, row_count_parity
from ingestion.bi.tables import TABLES, TableSpec

GROUP = "exports"
POOL = "clickhouse_export"
ORGANIZATIONS = dg.AssetKey(["silver", "ref__organizations"])


def gold_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.pg_schema, spec.pg_table])


def export_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(["clickhouse", spec.ch_table])


@contextmanager
def _clickhouse(clickhouse: ClickHouseResource) -> Iterator:
    # Without a server the resource would start the embedded one; no binary is a setup problem, not a bug:
    # fail with the install hint instead of a traceback from deep inside the client.
    try:
        with clickhouse.client() as client:
            yield client
    except ClickHouseNotInstalledError as exc:
        raise dg.Failure(description=str(exc)) from None


def clickhouse_configured() -> bool:
    """ClickHouse is configured (`CLICKHOUSE_URL`) or installed locally, so exports can run."""
    return bool(get_settings().clickhouse_url) or clickhouse_server_command() is not None


def _export_asset(spec: TableSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=export_key(spec),
        group_name=GROUP,
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[gold_key(spec)],
        pool=POOL,
        kinds={"clickhouse"},
        # Without ClickHouse every export would fail: they stay available to run by hand, not automated.
        automation_condition=automation.day_partitions() if clickhouse_configured() else None,
        description=f"{spec.qualified_pg_name} replicated to ClickHouse table `{spec.ch_table}` per market "
        f"day (the day is replaced, never appended). {spec.description}",
    )
    def _export(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, clickhouse: ClickHouseResource
    ) -> dg.MaterializeResult:
        per_day = {}
        archive_uri = get_settings().resolved_archive_uri  # where retention put the archived days
        with _clickhouse(clickhouse) as ch, warehouse.connect() as conn:
            for day in market_date_window(context).dates:
                result = replicate_partition(conn, ch, spec, day, archive_uri=archive_uri)
                context.log.info(
                    f"{spec.qualified_pg_name} {day}: {result.rows_loaded} rows from {result.source} "
                    f"in {result.seconds:.2f}s"
                )
                per_day[day.isoformat()] = result
        if len(per_day) == 1:
            return dg.MaterializeResult(metadata=next(iter(per_day.values())).as_metadata())
        return dg.MaterializeResult(
            metadata={
                "days": dg.MetadataValue.int(len(per_day)),
                "rows_loaded": dg.MetadataValue.int(sum(r.rows_loaded for r in per_day.values())),
                "seconds": dg.MetadataValue.float(round(sum(r.seconds for r in per_day.values()), 3)),
                "rows_per_day": dg.MetadataValue.json({d: r.rows_loaded for d, r in per_day.items()}),
            }
        )

    return _export


def _parity_check(spec: TableSpec, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="parity_and_unique_grain",
        blocking=True,
        partitions_def=daily_partitions,
        description=f"ClickHouse `{spec.ch_table}` holds as many rows of the day as "
        f"{spec.qualified_pg_name} (an archived day: as its archive) and no two rows share the grain "
        f"({', '.join(spec.grain_key)}).",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, clickhouse: ClickHouseResource
    ) -> dg.AssetCheckResult:
        counts: dict[str, dict[str, int]] = {}
        with _clickhouse(clickhouse) as ch, warehouse.connect() as conn:
            for day in market_date_window(context).dates:
                pg_count, ch_count = row_count_parity(conn, ch, spec, day)
                counts[day.isoformat()] = {
                    "pg_count": pg_count,
                    "ch_count": ch_count,
                    "duplicate_keys": duplicate_key_count(ch, spec, day),
                }
        failing = {d: c for d, c in counts.items() if c["pg_count"] != c["ch_count"] or c["duplicate_keys"]}
        return dg.AssetCheckResult(
            passed=not failing,
            metadata={
                "days": dg.MetadataValue.text(f"{min(counts)} .. {max(counts)}"),
                "pg_count": dg.MetadataValue.int(sum(c["pg_count"] for c in counts.values())),
                "ch_count": dg.MetadataValue.int(sum(c["ch_count"] for c in counts.values())),
                "duplicate_keys": dg.MetadataValue.int(sum(c["duplicate_keys"] for c in counts.values())),
                "failing_days": dg.MetadataValue.json(failing),
            },
        )

    return _check


clickhouse_exports = [_export_asset(spec) for spec in TABLES.values()]
clickhouse_export_checks = [
    _parity_check(spec, asset) for spec, asset in zip(TABLES.values(), clickhouse_exports, strict=True)
]


class BiAccessConfig(dg.Config):
    """Role names (cluster-wide in Postgres: a separate prefix keeps e.g. test runs apart)."""

    reader_role: str = "bi_reader"
    org_role_prefix: str = "org_"


@dg.asset(
    key=["bi", "access"],
    group_name=GROUP,
    deps=[ORGANIZATIONS, *(gold_key(spec) for spec in TABLES.values())],
    kinds={"postgres"},
    automation_condition=automation.unpartitioned(),
    description="BI roles (bi_reader, org_<id> per organization), grants, row-level security and the "
    "commented bi.* views on the gold tables; re-run after dbt rebuilds them (dbt drops all of that).",
)
def bi_access(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: BiAccessConfig
) -> dg.MaterializeResult:
    with warehouse.connect() as conn:
        ids = [r[0] for r in conn.execute("SELECT org_id FROM silver.ref__organizations ORDER BY org_id")]
        orgs = [o for o in ids if ORG_ID.match(o)]
        skipped = sorted(set(ids) - set(orgs))
        if skipped:
            # a role name must be a plain identifier; those organisations get no BI login
            context.log.warning(f"organization ids not usable as BI role names, skipped: {skipped}")
        roles = BiRoles(reader=config.reader_role, org_prefix=config.org_role_prefix)
        result = ensure_bi_roles(conn, orgs, roles=roles)
    return dg.MaterializeResult(
        metadata={
            "roles": dg.MetadataValue.json(list(result.roles)),
            "views": dg.MetadataValue.json(list(result.views)),
            "rls_tables": dg.MetadataValue.json(list(result.rls_tables)),
            "missing_tables": dg.MetadataValue.json(list(result.missing_tables)),
            "skipped_org_ids": dg.MetadataValue.json(skipped),
        }
    )


defs = dg.Definitions(assets=[*clickhouse_exports, bi_access], asset_checks=clickhouse_export_checks)
