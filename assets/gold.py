"""Gold: the dbt project (facts, dimensions, KPIs) as Dagster assets, and the expectation checks of the
gold tables that ML and the exports read.

Models and seeds are assets `["gold", <name>]` in group `gold`; dbt sources are the silver assets
`["silver", <table>]`; dbt tests become asset checks. Models tagged `partitioned` (the market/trading
staging views, the incremental facts and `kpi_values`) run per daily partition window (market-local dates,
inclusive), passed to dbt in the environment (`infra.dbt.dbt_process_env`, read by the `partition_bounds`
macro); one backfill run covers a whole range. Staging views are partitioned too so that a partition run
orders silver -> its blocking checks -> staging -> facts.
Reference staging, dimensions and seeds rebuild unpartitioned. The SQL belongs to `dbt_project/`.

The assets are built from `dbt_project/target/manifest.json`, which `make install` (`make dbt-parse`), the
deploy image and the platform's start (`app.platform`) prepare; loading the definitions never runs dbt.
"""

import json
import warnings
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from assets.shared import automation
from assets.shared.expectation_checks import import_suites_for_run, partition_suite_check
from assets.shared.partitions import daily_partitions, market_date_window
from assets.shared.resources import WarehouseResource
from infra.dbt import DBT_PROJECT_DIR, dbt_process_env, manifest_is_stale, run_target_path, save_parse_state
from infra.signals import signal_gold_window, signal_kpi_window
from ingestion.cdc.topics import CDC_SOURCE_TABLES

PARTITIONED_SELECTION = "tag:partitioned"

gold_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


class DbtManifestMissingError(RuntimeError):
    """The dbt manifest the gold assets are built from has not been prepared."""


def _manifest_nodes() -> dict[str, Mapping[str, Any]]:
    path = gold_dbt_project.manifest_path
    if not path.exists():
        raise DbtManifestMissingError(
            f"{path} does not exist: run `make dbt-parse` (or `dbt parse` in dbt_project/) before loading the "
            "Dagster definitions"
        )
    if manifest_is_stale(path):
        warnings.warn(
            f"{path} is older than the dbt project: the gold assets show the last parse; run `make dbt-parse` "
            "to load the changes",
            stacklevel=2,
        )
    return json.loads(path.read_text())["nodes"]


_NODES = _manifest_nodes()
_MODELS = {n["name"]: n for n in _NODES.values() if n["resource_type"] in ("model", "seed")}
# The silver trading tables exist (empty) from the warehouse's first migration: a deployment whose trading
# feed is not connected yet still builds its market facts and KPIs, and rebuilds its days once trading arrives.
SILVER_TRADING = dg.AssetSelection.assets(
    *(dg.AssetKey(["silver", f"trading__{e}{suffix}"]) for e in CDC_SOURCE_TABLES for suffix in ("", "_history"))
)
# The models rebuilt whole (staging of the reference, dimensions, seeds).
UNPARTITIONED_MODELS = dg.AssetSelection.assets(
    *(dg.AssetKey(["gold", name]) for name, n in sorted(_MODELS.items()) if "partitioned" not in n["tags"])
)
# Parents of the partitioned models that carry no day: their updates rebuild only the recent days.
UNPARTITIONED_PARENTS = dg.AssetSelection.groups("reference") | SILVER_TRADING | UNPARTITIONED_MODELS
# Every dbt invocation takes this pool (one at a time, step by step: `infra.dagster_instance`), so a partition
# run's models are built after the dimensions that the reference run is building for the first time
# (`automation.day_partitions`, `building_deps`). Two dbt builds side by side on two cores only share them.
DBT_POOL = "dbt"
# Models a partition run rewrites in the `gold` schema (staging views live in gold_staging, unread by the API).
GOLD_TABLES = {
    name: f"gold.{name}"
    for name, n in _MODELS.items()
    if n["resource_type"] == "model" and n["schema"] == "gold" and "partitioned" in n["tags"]
}
KPI_MODEL = "kpi_values"
# The gold facts and KPIs the freshness policy watches (the API's hourly reads).
FRESHNESS_WATCHED = {
    "fct_prices_hourly",
    "fct_prices_5min",
    "fct_load_hourly",
    "fct_generation_hourly",
    "fct_trades",
    "fct_positions",
    KPI_MODEL,
}


class GoldDbtTranslator(DagsterDbtTranslator):
    """dbt models/seeds -> `["gold", name]` in group `gold`; dbt sources -> the silver assets' keys.

    Partitioned models follow their silver days (and rebuild recent days when trading state or dimensions
    change), without waiting for the parents their dbt config lists in `meta.optional_parents` (the KPIs
    beside the trading facts: `macros/optional_parents.sql`); dimensions, reference staging and seeds follow
    their parents. dbt tests own no condition:
    they ride along in the runs of their model, where they block.
    """

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(["silver", dbt_resource_props["name"]])
        return dg.AssetKey(["gold", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return None if dbt_resource_props["resource_type"] == "source" else "gold"

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        if "partitioned" in dbt_resource_props.get("tags", []):
            optional = dbt_resource_props.get("config", {}).get("meta", {}).get("optional_parents", [])
            return automation.day_partitions(
                UNPARTITIONED_PARENTS,
                late_deps=SILVER_TRADING,
                building_deps=UNPARTITIONED_MODELS,
                optional_day_deps=dg.AssetSelection.assets(*(dg.AssetKey(["gold", n]) for n in optional))
                if optional
                else None,
            )
        return automation.unpartitioned()

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if spec.key.path[0] == "gold" and spec.key.path[-1] in FRESHNESS_WATCHED:
            return spec.replace_attributes(freshness_policy=automation.gold_fact_freshness())
        return spec


gold_translator = GoldDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


@dbt_assets(
    manifest=gold_dbt_project.manifest_path,
    project=gold_dbt_project,
    dagster_dbt_translator=gold_translator,
    exclude=PARTITIONED_SELECTION,
    name="gold_dbt_unpartitioned",
    pool=DBT_POOL,
)
def gold_dbt_unpartitioned(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
) -> Iterator[Any]:
    """Staging views, dimensions and seeds: rebuilt whole, they are small.

    A test with a parent outside this asset (the relationship tests of the partitioned facts on the
    dimensions, the KPI catalog's singular test on `kpi_values`) belongs to the partitioned run: on a fresh
    warehouse the facts do not exist yet. The whole asset excludes the partitioned models, and eager indirect
    selection drops their tests with them; a subset selects models by name (`_dbt_build`).
    """
    yield from _dbt_build(context, dbt, warehouse)


def _dbt_build(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: WarehouseResource,
    window: tuple[date, date] | None = None,
) -> Iterator[Any]:
    """`dbt build` of the run's models, and of the partition `window` when given, streamed as Dagster events.

    Cautious indirect selection in a subset run: a test that also reads a model outside the run (a relationship
    to a fact, a singular test over several facts) may read a table that does not exist yet, and belongs to the
    run that builds its last parent; one whose other parents are built dimensions or seeds runs here
    (`_tests_on_reference_parents`). The invocation starts from this warehouse's saved dbt parse and leaves its
    own for the next (`infra.dbt.run_target_path`).
    """
    # In a subset run `context.assets_def` is already the subset: only Dagster knows it is one.
    args = ["build"]
    if context.is_subset:
        args += ["--indirect-selection", "cautious", *_tests_on_reference_parents(context, warehouse)]
    import_suites_for_run(context)
    # dagster-dbt gives dbt this process's environment, no other.
    with dbt_process_env(warehouse.url, window):
        target = run_target_path(f"{context.op_execution_context.op.name}-{context.run.run_id[:8]}", warehouse.url)
        yield from dbt.cli(args, context=context, target_path=target).stream()
        save_parse_state(target, warehouse.url)


def _tests_on_reference_parents(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> list[str]:
    """`--select` arguments for the run's checks that cautious selection drops but that can run: tests of a
    partitioned model whose other parents are unpartitioned (a fact's zones against `dim_zone`, the KPI codes
    against the `kpi_catalog` seed) and already built. Without them a subset run, which is how the automation
    builds a day, never evaluates those checks."""
    selected = {key.name for key in context.selected_asset_check_keys}
    candidates: dict[str, set[tuple[str, str]]] = {}  # test -> the relations of its other parents
    for node in _NODES.values():
        attached = _NODES.get(node.get("attached_node") or "")
        if node["resource_type"] != "test" or node["name"] not in selected or attached is None:
            continue
        others = [_NODES.get(uid) for uid in node["depends_on"]["nodes"] if uid != node["attached_node"]]
        if "partitioned" not in attached["tags"] or not others:
            continue
        if all(other is not None and "partitioned" not in other["tags"] for other in others):
            candidates[node["name"]] = {(o["schema"], o.get("alias") or o["name"]) for o in others if o}
    if not candidates:
        return []
    with warehouse.connect() as conn:
        built = {
            relation
            for relation in set().union(*candidates.values())
            if conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", relation).fetchone()[0]
        }
    tests = sorted(test for test, parents in candidates.items() if parents <= built)
    return ["--select", " ".join(tests)] if tests else []


@dbt_assets(
    manifest=gold_dbt_project.manifest_path,
    project=gold_dbt_project,
    dagster_dbt_translator=gold_translator,
    select=PARTITIONED_SELECTION,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="gold_dbt_partitioned",
    pool=DBT_POOL,
)
def gold_dbt_partitioned(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
) -> Iterator[Any]:
    """Incremental facts and KPIs: delete+insert of the run's market-date window.

    As each model of the window commits, its gold table's version is bumped for every date of the window
    and, for `kpi_values`, KPI subscribers are notified (`infra.signals`): the API and streams follow.
    """
    window = market_date_window(context)
    first, last = window.first, window.last
    for event in _dbt_build(context, dbt, warehouse, (first, last)):
        yield event
        if isinstance(event, dg.Output | dg.AssetMaterialization):
            model = _model_of(context, event)
            if model in GOLD_TABLES:
                with warehouse.connect() as conn:
                    signal_gold_window(conn, GOLD_TABLES[model], first, last)
                    if model == KPI_MODEL:
                        signal_kpi_window(conn, first, last)


def _model_of(context: dg.AssetExecutionContext, event: dg.Output | dg.AssetMaterialization) -> str | None:
    """The dbt model an Output/AssetMaterialization event of the dbt stream is for."""
    if isinstance(event, dg.AssetMaterialization):
        key = event.asset_key
    else:
        key = context.asset_key_for_output(event.output_name)
    return key.path[-1] if key.path[0] == "gold" else None


# --- checks ---------------------------------------------------------------------------------------------


def _kpi_codes(warehouse: WarehouseResource) -> list[str] | None:
    """The codes of the KPI catalog (`gold.kpi_catalog`), None before the catalog exists."""
    with warehouse.connect() as conn:
        exists = conn.execute("SELECT to_regclass('gold.kpi_catalog')").fetchone()
        if not exists or exists[0] is None:
            return None
        return [r[0] for r in conn.execute("SELECT kpi_code FROM gold.kpi_catalog")]


# Blocking: a failing gold suite stops the ML and export assets of the same run.
gold_fct_prices_hourly_expectations = partition_suite_check("gold.fct_prices_hourly")
gold_fct_load_hourly_expectations = partition_suite_check("gold.fct_load_hourly")
gold_kpi_values_expectations = partition_suite_check("gold.kpi_values", kpi_codes=_kpi_codes)

defs = dg.Definitions(
    assets=[gold_dbt_unpartitioned, gold_dbt_partitioned],
    asset_checks=[
        gold_fct_prices_hourly_expectations,
        gold_fct_load_hourly_expectations,
        gold_kpi_values_expectations,
    ],
)
