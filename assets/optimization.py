"""Optimization assets: storage schedules, bid curves and unit commitment per delivery day, from forecasts.

Each asset body gathers its resources and config, calls `ml.optimization.delivery_day` (forecasts from
gold.forecasts, or a weekly-naive forecast from the hourly facts until forecasts exist; problem assembly;
solve and store every run in ml.optimization_runs, replacing the delivery day's rows in
gold.storage_schedules / gold.bid_curves / gold.unit_commitment) and reports metadata.
"""

from collections import Counter
from datetime import date
from pathlib import Path

import dagster as dg

from assets.shared import automation
from assets.shared.evidence import evidence_links, report_folder_link, report_urls
from assets.shared.partitions import delivery_day_partitions
from assets.shared.resources import WarehouseResource
from infra.settings import get_settings
from ml.optimization import SolveOptions
from ml.optimization import delivery_day as day_problems

FORECASTS = dg.AssetKey(["gold", "forecasts"])
PRICES = dg.AssetKey(["gold", "fct_prices_hourly"])
LOAD = dg.AssetKey(["gold", "fct_load_hourly"])
REF_ASSETS = dg.AssetKey(["silver", "ref__assets"])
PREVIEW_ROWS = 24
# Tomorrow's delivery day is optimized on the facts up to today (the forecast itself is for the same day).
DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
AUTOMATION = automation.day_ahead(follow=dg.AssetSelection.assets(FORECASTS))
AUTOMATION_NOTE = (
    " Runs for tomorrow a lead time before each market's day-ahead gate closure (in the market's timezone), "
    "right after each new forecast, and at most hourly when other inputs change; fresh when tomorrow's "
    "results exist by the day's first gate closure."
)


class OptimizationConfig(dg.Config):
    time_limit_s: float = 2.0  # per instance: the hard limit of a day-ahead solve
    relative_gap: float = 0.001


def _run_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    config: OptimizationConfig,
    build: day_problems.InstanceBuilder,
) -> tuple[day_problems.DayOptimization, dict[str, dg.MetadataValue]]:
    day = date.fromisoformat(context.partition_key)
    options = SolveOptions(time_limit_s=config.time_limit_s, relative_gap=config.relative_gap)
    with warehouse.connect() as conn:
        try:
            run = day_problems.optimize_delivery_day(conn, day, build, options)
        except day_problems.NothingToOptimizeError as exc:
            raise dg.Failure(description=str(exc), metadata={"skipped": dg.MetadataValue.json(exc.skipped)}) from exc
    for line in run.log_lines():
        context.log.info(line)
    records = run.records
    objectives = [r["objective"] for r in records if r["objective"] is not None]
    gaps = [r["relative_gap"] for r in records if r["relative_gap"] is not None]
    frame = run.result_rows()
    metadata = {
        "delivery_day": dg.MetadataValue.text(str(day)),
        "instances": dg.MetadataValue.int(len(run.solved)),
        "objective": dg.MetadataValue.float(float(sum(objectives))) if objectives else dg.MetadataValue.null(),
        "solver_status": dg.MetadataValue.json(dict(Counter(r["status"] for r in records))),
        "max_relative_gap": dg.MetadataValue.float(max(gaps)) if gaps else dg.MetadataValue.null(),
        "solve_time_s": dg.MetadataValue.float(float(sum(r["solve_time_s"] for r in records))),
        "rows": dg.MetadataValue.int(len(frame)),
        "run_ids": dg.MetadataValue.json([r["run_id"] for r in records]),
        "forecast_sources": dg.MetadataValue.json(
            {f"{s.instance.org_id}/{s.instance.key}": s.instance.sources for s in run.solved}
        ),
        "forecast_source_summary": dg.MetadataValue.json(run.forecast_source_kinds()),
        "skipped": dg.MetadataValue.json(run.skipped),
        "preview": dg.MetadataValue.md(
            frame.drop(columns=["rationale"], errors="ignore").head(PREVIEW_ROWS).to_markdown(index=False)
        ),
    }
    return run, metadata


@dg.asset(
    key=["gold", "storage_schedules"],
    group_name="optimization",
    partitions_def=delivery_day_partitions,
    deps=[FORECASTS, dg.AssetDep(PRICES, partition_mapping=DAY_BEFORE), REF_ASSETS],
    automation_condition=AUTOMATION,
    freshness_policy=automation.day_ahead_freshness(),
    description="Revenue-maximising battery schedules per delivery day (runs in ml.optimization_runs)."
    + AUTOMATION_NOTE,
)
def storage_schedules(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: OptimizationConfig
) -> dg.MaterializeResult:
    run, metadata = _run_day(context, warehouse, config, day_problems.storage_instances)
    folder = Path(get_settings().reports_dir) / "optimization" / context.partition_key
    plots = day_problems.storage_schedule_plots(run.solved, folder, context.partition_key)
    metadata["plot"] = dg.MetadataValue.path(plots[0]) if plots else dg.MetadataValue.null()
    if plots and "plot" in (links := evidence_links(plots[0], "plot")):
        metadata["plot_url"] = links["plot"]
    metadata["plots"] = dg.MetadataValue.json(plots)
    metadata["plot_urls"] = dg.MetadataValue.json(report_urls(plots))
    metadata["all_plots"] = report_folder_link("optimization")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=["gold", "bid_curves"],
    group_name="optimization",
    partitions_def=delivery_day_partitions,
    deps=[FORECASTS, dg.AssetDep(PRICES, partition_mapping=DAY_BEFORE), REF_ASSETS],
    automation_condition=AUTOMATION,
    freshness_policy=automation.day_ahead_freshness(),
    description="Exchange-conforming day-ahead bid curves per organization and zone." + AUTOMATION_NOTE,
)
def bid_curves(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: OptimizationConfig
) -> dg.MaterializeResult:
    _, metadata = _run_day(context, warehouse, config, day_problems.bid_curve_instances)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=["gold", "unit_commitment"],
    group_name="optimization",
    partitions_def=delivery_day_partitions,
    deps=[FORECASTS, dg.AssetDep(LOAD, partition_mapping=DAY_BEFORE), REF_ASSETS],
    automation_condition=AUTOMATION,
    freshness_policy=automation.day_ahead_freshness(),
    description="Least-cost commitment of each organization's thermal/hydro units against the load forecast."
    + AUTOMATION_NOTE,
)
def unit_commitment(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: OptimizationConfig
) -> dg.MaterializeResult:
    _, metadata = _run_day(context, warehouse, config, day_problems.unit_commitment_instances)
    return dg.MaterializeResult(metadata=metadata)


def _day_check(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, problem: str
) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        checked, problems = day_problems.delivery_day_violations(
            conn, problem, date.fromisoformat(context.partition_key)
        )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "runs_checked": dg.MetadataValue.int(checked),
            "runs_with_violations": dg.MetadataValue.int(len(problems)),
            "violations": dg.MetadataValue.json({k: v[:10] for k, v in problems.items()}),
        },
    )


@dg.asset_check(
    asset=storage_schedules,
    blocking=True,
    partitions_def=delivery_day_partitions,
    description="Every stored schedule of the day respects power, SoC, terminal and cycle limits.",
)
def storage_schedules_feasible(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _day_check(context, warehouse, "storage_dispatch")


@dg.asset_check(
    asset=bid_curves,
    blocking=True,
    partitions_def=delivery_day_partitions,
    description="Every curve of the day is monotone, on ticks, within floor/cap and the step limit.",
)
def bid_curves_conform(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _day_check(context, warehouse, "bid_curves")


@dg.asset_check(
    asset=unit_commitment,
    blocking=True,
    partitions_def=delivery_day_partitions,
    description="Every commitment of the day meets load and reserve within the units' technical limits.",
)
def unit_commitment_feasible(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _day_check(context, warehouse, "unit_commitment")


defs = dg.Definitions(
    assets=[storage_schedules, bid_curves, unit_commitment],
    asset_checks=[storage_schedules_feasible, bid_curves_conform, unit_commitment_feasible],
)
