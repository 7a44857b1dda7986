"""Gold assets: the dbt project (facts, dimensions, KPIs) as Dagster assets.

Models and seeds are assets `["gold", <name>]` in group `gold`; dbt sources are the silver assets
`["silver", <table>]`; dbt tests become asset checks. Models tagged `partitioned` (the market/trading
staging views, the incremental facts and `kpi_values`) run per daily partition window, passed to dbt as
vars `min_date`/`max_date` (market-local dates, inclusive); one backfill run covers a whole range. Staging
views are partitioned too so that a partition run orders silver -> its blocking checks -> staging -> facts.
Reference staging, dimensions and seeds rebuild unpartitioned.

The manifest is prepared at load: `dbt parse` under `dagster dev` (`prepare_if_dev`) and, on a fresh
checkout without `dbt_project/target/manifest.json`, once here; deployments run `dbt parse` at build time
(Makefile) so loading never invokes dbt.
"""

import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from infra.dbt import DBT_PROJECT_DIR, export_dbt_env, manifest_is_stale, prepare_manifest
from orchestration.partitions import daily_partitions
from orchestration.resources import WarehouseResource

PARTITIONED_SELECTION = "tag:partitioned"

gold_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
# `make install` parses the project once; re-parse here only when a model, seed or macro is newer than the
# manifest (editing dbt files under `dagster dev`). DbtProject.prepare_if_dev would look for `dbt` on PATH.
if manifest_is_stale(gold_dbt_project.manifest_path):
    prepare_manifest(gold_dbt_project.project_dir / gold_dbt_project.target_path)


class GoldDbtTranslator(DagsterDbtTranslator):
    """dbt models/seeds -> `["gold", name]` in group `gold`; dbt sources -> the silver assets' keys."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(["silver", dbt_resource_props["name"]])
        return dg.AssetKey(["gold", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return None if dbt_resource_props["resource_type"] == "source" else "gold"


gold_translator = GoldDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


@dbt_assets(
    manifest=gold_dbt_project.manifest_path,
    project=gold_dbt_project,
    dagster_dbt_translator=gold_translator,
    exclude=PARTITIONED_SELECTION,
    name="gold_dbt_unpartitioned",
)
def gold_dbt_unpartitioned(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
) -> Iterator[Any]:
    """Staging views, dimensions and seeds: rebuilt whole, they are small."""
    export_dbt_env(warehouse.url)
    yield from dbt.cli(["build"], context=context).stream()


@dbt_assets(
    manifest=gold_dbt_project.manifest_path,
    project=gold_dbt_project,
    dagster_dbt_translator=gold_translator,
    select=PARTITIONED_SELECTION,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="gold_dbt_partitioned",
)
def gold_dbt_partitioned(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
) -> Iterator[Any]:
    """Incremental facts and KPIs: delete+insert of the run's market-date window."""
    window = context.partition_time_window
    dbt_vars = {
        "min_date": window.start.date().isoformat(),
        "max_date": (window.end - timedelta(days=1)).date().isoformat(),
    }
    export_dbt_env(warehouse.url)
    yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream()
