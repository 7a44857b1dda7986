"""ML assets: forecasts, backtests, drift reports and anomalies downstream of gold, and the accuracy side:
shadow forecasts of a challenger, accuracy once actuals arrive, champion/challenger promotion, explanations.

Each asset body gathers its resources and config, calls the library and reports metadata: the daily
forecast is `ml.forecasting.daily`, the weekly champion selection `ml.forecasting.backtests`, drift
`ml.monitoring.drift_windows` + `ml.monitoring.drift`, anomalies `ml.monitoring.anomaly_days`, shadow
forecasts, scoring and promotion `ml.forecasting.accuracy`, explanations `ml.forecasting.explain`. Gold is
read through `ml.warehouse_reads` and written through `ml.forecasting.warehouse`.
"""

import time
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.shared import automation
from assets.shared.evidence import evidence_links, mlflow_run_link, report_folder_link, report_urls
from assets.shared.partitions import daily_partitions, delivery_day_partitions, market_date_window
from assets.shared.resources import MlflowResource, WarehouseResource
from infra.settings import get_settings
from ml.forecasting import accuracy as forecast_accuracy
from ml.forecasting import backtests as forecast_backtests
from ml.forecasting import daily as daily_forecast
from ml.forecasting import explain as forecast_explain
from ml.forecasting.tracking import experiment_id_for
from ml.forecasting.warehouse import replace_drift_summaries, set_explanations_mlflow_run
from ml.monitoring.anomaly_days import replace_day_anomalies
from ml.monitoring.drift import drift_by_zone
from ml.monitoring.drift_windows import read_drift_windows
from ml.warehouse_reads import MissingFactsError

PRICES = dg.AssetKey(["gold", "fct_prices_hourly"])
LOAD = dg.AssetKey(["gold", "fct_load_hourly"])
FORECASTS = dg.AssetKey(["gold", "forecasts"])
SHADOW = dg.AssetKey(["ml", "shadow_forecasts"])
ACCURACY = dg.AssetKey(["ml", "forecast_accuracy"])
DRIFT = dg.AssetKey(["ml", "drift_report"])
# Tomorrow's delivery day is forecast from the facts up to today: delivery day D depends on market day D-1.
DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


def _md_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".3f") if not frame.empty else "(none)"


# --- gold.forecasts -------------------------------------------------------------------------------------


class ForecastConfig(dg.Config):
    horizon_hours: int = 24  # 24..168; days after the first are forecast recursively
    calibration_days: int = 28  # out-of-sample days behind the conformal intervals (shortened to history)
    history_days: int = 182  # history read per run; LEAR's long windows shrink to it (runtime bound)
    # load first: its forecast is the price model's `load` feature
    targets: list[str] = Field(default=["load", "price"])
    fallback_models: list[str] = Field(default=["seasonal_naive"])  # when the history is too short for LEAR
    use_champions: bool = True  # the per-zone model chosen by the backtests asset, when there is one
    zones: list[str] = Field(default=[])  # empty: every zone with public facts


@dg.asset(
    key=["gold", "forecasts"],
    group_name="ml",
    partitions_def=delivery_day_partitions,
    deps=[dg.AssetDep(PRICES, partition_mapping=DAY_BEFORE), dg.AssetDep(LOAD, partition_mapping=DAY_BEFORE)],
    automation_condition=automation.day_ahead(),
    freshness_policy=automation.day_ahead_freshness(),
    description="Day-ahead price and load forecasts with conformal intervals, per zone and delivery day. "
    "Runs for tomorrow a lead time (OPTIBID_GATE_CLOSURE_LEAD_MINUTES) before each market's day-ahead gate "
    "closure, in the market's timezone (ml/optimization/gate_closures.py), and again, at most hourly, when "
    "today's facts change; fresh when tomorrow's forecast exists by the day's first gate closure.",
)
def forecasts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: ForecastConfig
) -> dg.MaterializeResult:
    try:
        daily_forecast.check_forecast_request(config.horizon_hours, config.targets)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    day = date.fromisoformat(context.partition_key)
    with warehouse.connect() as conn:
        try:
            run = daily_forecast.forecast_delivery_day(
                conn,
                day,
                horizon_hours=config.horizon_hours,
                calibration_days=config.calibration_days,
                history_days=config.history_days,
                targets=config.targets,
                fallback_models=config.fallback_models,
                use_champions=config.use_champions,
                zones=config.zones or None,
            )
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        for note in run.notes:
            context.log.info(note)
        if not run.published:
            raise dg.Failure(
                description=f"no zone could be forecast for {day}",
                metadata={"skipped": dg.MetadataValue.json(run.skipped)},
            )
        rows = daily_forecast.publish_forecasts(conn, run, context.run_id)
        recent = daily_forecast.recent_published(conn, run)
    folder = Path(get_settings().reports_dir) / "forecasts" / context.partition_key
    coverage, plots = daily_forecast.coverage_and_plots(recent, run.facts, folder)
    summary = run.summary()
    return dg.MaterializeResult(
        metadata={
            "delivery_day": dg.MetadataValue.text(str(day)),
            "rows": dg.MetadataValue.int(rows),
            "zones": dg.MetadataValue.json(sorted({fc.zone for fc in run.published})),
            "models": dg.MetadataValue.json({str(k): int(v) for k, v in summary.groupby("model").size().items()}),
            "forecasts": dg.MetadataValue.md(_md_table(summary)),
            "skipped": dg.MetadataValue.json(run.skipped),
            "coverage_latest_known_day": dg.MetadataValue.md(_md_table(coverage)),
            "plot": dg.MetadataValue.path(plots[0]) if plots else dg.MetadataValue.null(),
            **_plot_url(plots),
            "plots": dg.MetadataValue.json(plots),
            "plot_urls": dg.MetadataValue.json(report_urls(plots)),
            "all_plots": report_folder_link("forecasts"),
        }
    )


def _plot_url(plots: list[str]) -> dict[str, dg.MetadataValue]:
    """`plot_url`: the first plot's page on the landing page, when it has one."""
    links = evidence_links(plots[0], "plot") if plots else {}
    return {"plot_url": links["plot"]} if "plot" in links else {}


# --- ml.backtests ---------------------------------------------------------------------------------------


class BacktestConfig(dg.Config):
    days: int = 14  # scored local days, ending with the last complete day of data
    warmup_days: int = 7  # forecast before the window so intervals are calibrated from its first day
    history_days: int = 182
    # Single models challenging the production LEAR + DNN ensemble, which is always a candidate and stays
    # champion unless one of these beats it (ml.forecasting.selection); lear and dnn are its own members.
    models: list[str] = Field(default=["lear", "dnn", "seasonal_naive", "auto_ets", "auto_theta"])
    targets: list[str] = Field(default=["price"])
    selection_metric: str = "mae"  # one of ml.forecasting.selection.SELECTION_METRICS (lower is better)
    zones: list[str] = Field(default=[])  # empty: every zone with public facts


@dg.asset(
    key=["ml", "backtests"],
    group_name="ml",
    deps=[PRICES, LOAD],
    automation_condition=automation.weekly(),
    description=(
        "Weekly rolling-origin backtest per zone: the production LEAR + DNN ensemble against single models; "
        "a single model becomes the zone's champion only if it beats the ensemble (MAE, same origins). "
        "Runs after Monday 03:00 once gold has updated since."
    ),
)
def backtests(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    config: BacktestConfig,
) -> dg.MaterializeResult:
    try:
        forecast_backtests.check_selection_metric(config.selection_metric)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    uri = mlflow.uri()
    with warehouse.connect() as conn:
        try:
            inputs = forecast_backtests.read_backtest_inputs(
                conn, config.history_days, config.targets, config.zones or None
            )
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
    run = forecast_backtests.backtest_zones(
        inputs,
        targets=config.targets,
        days=config.days,
        warmup_days=config.warmup_days,
        models=config.models,
        selection_metric=config.selection_metric,
        tracking_uri=uri,
        run_id=context.run_id,
    )
    for note in run.notes:
        context.log.info(note)
    if not run.selections:
        raise dg.Failure(
            description="no zone could be backtested", metadata={"skipped": dg.MetadataValue.json(run.skipped)}
        )
    with warehouse.connect() as conn:
        forecast_backtests.store_selections(conn, context.run_id, run.selections)
    chosen = {f"{s.selection.zone}/{s.target}": s for s in run.selections}
    experiment = experiment_id_for(uri)
    run_links = {f"mlflow_run {key}": mlflow_run_link(experiment, s.mlflow_run_id) for key, s in sorted(chosen.items())}
    return dg.MaterializeResult(
        metadata={
            "metrics": dg.MetadataValue.md(_md_table(pd.DataFrame(run.metrics))),
            "champions": dg.MetadataValue.json({k: s.selection.champion_key for k, s in chosen.items()}),
            "candidates": dg.MetadataValue.json({k: s.selection.candidates for k, s in chosen.items()}),
            "registry_versions": dg.MetadataValue.json({k: s.registry_version for k, s in chosen.items()}),
            "mlflow_tracking_uri": dg.MetadataValue.text(uri),
            "mlflow_experiment": dg.MetadataValue.url(f"{get_settings().mlflow_ui_url}/#/experiments/{experiment}"),
            **run_links,
            "skipped": dg.MetadataValue.json(run.skipped),
        }
    )


# --- ml.drift_report ------------------------------------------------------------------------------------


class DriftConfig(dg.Config):
    current_days: int = 7
    reference_days: int = 28


@dg.asset(
    key=["ml", "drift_report"],
    group_name="ml",
    deps=[PRICES, LOAD, FORECASTS],
    automation_condition=automation.weekly(),
    description="Evidently drift of price, load and forecast error per zone: last week vs the weeks before. "
    "Runs after Monday 03:00 once gold has updated since. Per-zone summaries are kept in ml.drift_summaries.",
)
def drift_report(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: DriftConfig
) -> dg.MaterializeResult:
    with warehouse.connect() as conn:
        try:
            windows = read_drift_windows(conn, config.current_days, config.reference_days)
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
    start, split, end, with_errors = windows.start, windows.split, windows.end, windows.with_errors
    folder = Path(get_settings().reports_dir) / "drift" / f"{split:%Y-%m-%d}"
    began = time.perf_counter()
    out = drift_by_zone(
        windows.reference,
        windows.current,
        folder,
        windows.reference_forecasts if with_errors else None,
        windows.current_forecasts if with_errors else None,
        model="published" if with_errors else None,
    )
    context.log.info(f"drift reports for {len(out)} zones in {time.perf_counter() - began:.1f}s")
    with warehouse.connect() as conn:
        replace_drift_summaries(conn, out, start, split, end)
    max_share = float(out["drift_share"].max()) if not out.empty else 0.0
    zone_urls = {
        str(zone): url
        for zone, path in zip(out["unique_id"], out["report_path"], strict=True)
        if (url := get_settings().report_url(path)) is not None
    }
    return dg.MaterializeResult(
        metadata={
            "reference": dg.MetadataValue.text(f"{start:%Y-%m-%d %H:%M} .. {split:%Y-%m-%d %H:%M} UTC"),
            "current": dg.MetadataValue.text(f"{split:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC"),
            "zones": dg.MetadataValue.int(len(out)),
            "max_drift_share": dg.MetadataValue.float(max_share),
            "drift_share": dg.MetadataValue.json(
                dict(zip(out["unique_id"], out["drift_share"].astype(float), strict=True))
            ),
            "forecast_error_included": dg.MetadataValue.bool(with_errors),
            "summary": dg.MetadataValue.md(_md_table(out.drop(columns="report_path"))),
            "reports": dg.MetadataValue.json(list(out["report_path"])),
            "report_urls": dg.MetadataValue.json(zone_urls),
            **{f"report {zone}": dg.MetadataValue.url(url) for zone, url in zone_urls.items()},
            "report_dir": dg.MetadataValue.path(str(folder)),
            "all_reports": report_folder_link("drift"),
        }
    )


@dg.asset_check(
    asset=drift_report,
    blocking=False,
    description="Warns when any zone's drift share exceeds OPTIBID_DRIFT_SHARE_WARN_THRESHOLD.",
)
def drift_share_below_threshold(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    threshold = get_settings().drift_share_warn_threshold
    event = context.instance.get_latest_materialization_event(DRIFT)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    shares = metadata["drift_share"].value if "drift_share" in metadata else {}
    over = {z: s for z, s in shares.items() if s > threshold}
    # The drift report of the zone furthest over (else of the most drifted zone): one click to its page.
    urls = metadata["report_urls"].value if "report_urls" in metadata else {}
    worst = max(over or shares, key=lambda z: shares[z], default=None)
    links = {"report": dg.MetadataValue.url(urls[worst])} if worst in urls else {}
    return dg.AssetCheckResult(
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "threshold": dg.MetadataValue.float(threshold),
            "zones_over_threshold": dg.MetadataValue.json(over),
            "zones_checked": dg.MetadataValue.int(len(shares)),
            **links,
        },
    )


# --- gold.anomalies -------------------------------------------------------------------------------------


@dg.asset(
    key=["gold", "anomalies"],
    group_name="ml",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[PRICES, LOAD, FORECASTS],
    automation_condition=automation.day_partitions(),
    description="Price and load spikes and level shifts per zone and market day (replaced per day); rebuilt "
    "whenever the day's facts or forecasts change.",
)
def anomalies(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    days = market_date_window(context).dates
    rows_by_day: dict[str, int] = {}
    methods: dict[str, str] = {}
    flagged: list[pd.DataFrame] = []
    with warehouse.connect() as conn:
        for day in days:
            found = replace_day_anomalies(conn, day)
            for warning in found.warnings:
                context.log.warning(warning)
            rows_by_day[day.isoformat()] = found.written
            methods.update(found.methods)
            flagged.append(found.rows)
    every = pd.concat(flagged, ignore_index=True)
    counts = {f"{t}/{k}": int(n) for (t, k), n in every.groupby(["target", "kind"]).size().items()}
    preview = every.drop(columns="market_date").head(20)
    return dg.MaterializeResult(
        metadata={
            "market_dates": dg.MetadataValue.text(f"{days[0]} .. {days[-1]}"),
            "rows": dg.MetadataValue.int(sum(rows_by_day.values())),
            "rows_per_day": dg.MetadataValue.json(rows_by_day),
            "by_kind": dg.MetadataValue.json(counts),
            "methods": dg.MetadataValue.json(methods),
            "preview": dg.MetadataValue.md(_md_table(preview)),
        }
    )


# --- ml.shadow_forecasts, ml.forecast_accuracy, ml.champion_promotion -------------------------------------


class ShadowConfig(dg.Config):
    challenger_model: str = "lear"  # a candidate name (ml.forecasting.selection.candidate_pipeline)
    calibration_days: int = 28
    history_days: int = 182
    zones: list[str] = Field(default=[])  # empty: every zone with public facts


@dg.asset(
    key=["ml", "shadow_forecasts"],
    group_name="ml",
    partitions_def=delivery_day_partitions,
    deps=[
        dg.AssetDep(PRICES, partition_mapping=DAY_BEFORE),
        dg.AssetDep(LOAD, partition_mapping=DAY_BEFORE),
        FORECASTS,
    ],
    automation_condition=automation.day_ahead(follow=dg.AssetSelection.assets(FORECASTS)),
    description="The challenger's day-ahead price forecast per zone, in shadow beside the published champion "
    "(never served as the forecast; scored like it by ml/forecast_accuracy). Follows gold/forecasts.",
)
def shadow_forecasts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: ShadowConfig
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    with warehouse.connect() as conn:
        try:
            run = forecast_accuracy.shadow_delivery_day(
                conn,
                day,
                config.challenger_model,
                context.run_id,
                calibration_days=config.calibration_days,
                history_days=config.history_days,
                zones=config.zones or None,
            )
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
    for zone, why in run.skipped.items():
        context.log.info(f"{zone}: {why}")
    return dg.MaterializeResult(
        metadata={
            "challenger": dg.MetadataValue.text(run.challenger),
            "rows": dg.MetadataValue.json(run.written),
            "skipped": dg.MetadataValue.json(run.skipped),
        }
    )


class AccuracyConfig(dg.Config):
    targets: list[str] = Field(default=["price", "load"])
    zones: list[str] = Field(default=[])  # empty: every zone with forecasts
    plot_days: int = 60  # days of accuracy history logged to MLflow per run


@dg.asset(
    key=["ml", "forecast_accuracy"],
    group_name="ml",
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[PRICES, LOAD, FORECASTS, SHADOW],
    # Forecasts exist for the days the platform ran before: a day without them scores what there is.
    automation_condition=automation.day_partitions(optional_deps=dg.AssetSelection.assets(FORECASTS, SHADOW)),
    description="MAE, RMSE, sMAPE and bias of every published and shadow forecast per zone, target, model and "
    "horizon day, scored on each market day once its actuals exist; accuracy over time is logged to MLflow "
    "(experiment optibid-forecast-accuracy: metrics and a plot per zone).",
)
def forecast_accuracy_scores(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource, config: AccuracyConfig
) -> dg.MaterializeResult:
    days = market_date_window(context).dates
    scored, skipped = [], {}
    with warehouse.connect() as conn:
        try:
            for day in days:
                found = forecast_accuracy.score_market_day(conn, day, config.targets, config.zones or None)
                scored.append(found.rows)
                skipped.update({f"{day}/{k}": v for k, v in found.skipped.items()})
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        history = forecast_accuracy.accuracy_history(conn, days[-1], config.plot_days, config.zones or None)
    rows = pd.concat(scored, ignore_index=True)
    mlflow_run = (
        forecast_accuracy.log_accuracy_to_mlflow(history, mlflow.uri(), f"accuracy-{days[-1]}")
        if not history.empty
        else None
    )
    summary = rows.groupby(["zone", "target", "role", "model"], as_index=False)["mae"].mean() if len(rows) else rows
    return dg.MaterializeResult(
        metadata={
            "market_dates": dg.MetadataValue.text(f"{days[0]} .. {days[-1]}"),
            "rows": dg.MetadataValue.int(len(rows)),
            "mae": dg.MetadataValue.md(_md_table(summary)),
            "skipped": dg.MetadataValue.json(skipped),
            "mlflow_run_id": dg.MetadataValue.text(mlflow_run or ""),
            "mlflow_tracking_uri": dg.MetadataValue.text(mlflow.uri()),
        }
    )


class PromotionConfig(dg.Config):
    days: int = 14  # the rule's window of common complete days
    alpha: float = 0.05  # one-sided Diebold-Mariano significance level
    min_hours: int = 23
    zones: list[str] = Field(default=[])


@dg.asset(
    key=["ml", "champion_promotion"],
    group_name="ml",
    deps=[ACCURACY],
    automation_condition=automation.unpartitioned(),
    description="Champion/challenger decision per zone after each accuracy update: the shadow challenger "
    "becomes champion only if its MAE is lower over the last N common days and the Diebold-Mariano test is "
    "significant (rule in ml/forecasting/accuracy.py); every decision is kept in ml.promotion_decisions.",
)
def champion_promotion(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: PromotionConfig
) -> dg.MaterializeResult:
    rule = forecast_accuracy.PromotionRule(days=config.days, alpha=config.alpha, min_hours=config.min_hours)
    with warehouse.connect() as conn:
        end = forecast_accuracy.latest_scored_date(conn)
        if end is None:
            return dg.MaterializeResult(metadata={"decisions": dg.MetadataValue.md("(nothing scored yet)")})
        decisions = forecast_accuracy.promote_challengers(conn, end, rule, context.run_id, config.zones or None)
    table = pd.DataFrame([vars(d) for d in decisions])
    for d in decisions:
        context.log.info(f"{d.zone}/{d.target}: {'PROMOTED ' if d.promoted else ''}{d.challenger}: {d.reason}")
    return dg.MaterializeResult(
        metadata={
            "rule": dg.MetadataValue.text(rule.describe()),
            "through": dg.MetadataValue.text(str(end)),
            "promoted": dg.MetadataValue.json({d.zone: d.challenger for d in decisions if d.promoted}),
            "decisions": dg.MetadataValue.md(_md_table(table)),
        }
    )


# --- ml.forecast_explanations ------------------------------------------------------------------------------


class ExplanationConfig(dg.Config):
    history_days: int = 182
    dnn_members: int = 4  # the production DNN architecture, fewer members (explanations are averaged over them)
    dnn_max_epochs: int = 400
    zones: list[str] = Field(default=[])


@dg.asset(
    key=["ml", "forecast_explanations"],
    group_name="ml",
    partitions_def=delivery_day_partitions,
    deps=[FORECASTS],
    automation_condition=automation.day_ahead(follow=dg.AssetSelection.assets(FORECASTS)),
    description="Per forecast hour, each input's contribution to the day-ahead price forecast: exact for LEAR "
    "(coefficient x feature through its scaling), integrated gradients for the DNN; rows in "
    "ml.forecast_explanations, a plot per zone in the day's MLflow run (experiment optibid-forecast-explanations).",
)
def forecast_explanations(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    config: ExplanationConfig,
) -> dg.MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    with warehouse.connect() as conn:
        try:
            run = forecast_explain.explain_delivery_day(
                conn,
                day,
                context.run_id,
                history_days=config.history_days,
                dnn_members=config.dnn_members,
                dnn_max_epochs=config.dnn_max_epochs,
                zones=config.zones or None,
            )
        except MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        mlflow_run = None
        if run.explanations:
            mlflow_run = forecast_explain.log_explanations_to_mlflow(
                run.explanations, mlflow.uri(), context.partition_key, f"explanations-{context.partition_key}"
            )
            set_explanations_mlflow_run(conn, day, context.run_id, mlflow_run)
    for zone, why in run.skipped.items():
        context.log.info(f"{zone}: {why}")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.json(run.written),
            "models": dg.MetadataValue.json({z: [e.model for e in exps] for z, exps in run.explanations.items()}),
            "skipped": dg.MetadataValue.json(run.skipped),
            "mlflow_run_id": dg.MetadataValue.text(mlflow_run or ""),
        }
    )


defs = dg.Definitions(
    assets=[
        forecasts,
        backtests,
        drift_report,
        anomalies,
        shadow_forecasts,
        forecast_accuracy_scores,
        champion_promotion,
        forecast_explanations,
    ],
    asset_checks=[drift_share_below_threshold],
)
