"""ML assets: forecasts, backtests, drift reports and anomalies downstream of gold.

Thin wrappers: `ml.forecasting.warehouse` reads the gold facts and writes gold.forecasts, gold.anomalies,
ml.backtests and ml.model_selection; the forecasting library (`ml.forecasting`), MLflow tracking and the
monitoring modules do the work.
"""

import math
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
from pydantic import Field

from assets.shared import automation
from assets.shared.partitions import daily_partitions, delivery_day_partitions
from assets.shared.resources import MlflowResource, WarehouseResource
from infra.settings import get_settings
from ml.forecasting import warehouse as wh
from ml.forecasting.data import ID_COL, TARGET_COL, TIME_COL, ForecastDataError, local_day_hours_utc
from ml.forecasting.selection import (
    SELECTION_METRICS,
    ZoneSelection,
    complete_day_window,
    relabelled,
    select_zone,
)

PRICES = dg.AssetKey(["gold", "fct_prices_hourly"])
LOAD = dg.AssetKey(["gold", "fct_load_hourly"])
FORECASTS = dg.AssetKey(["gold", "forecasts"])
DRIFT = dg.AssetKey(["ml", "drift_report"])
# Tomorrow's delivery day is forecast from the facts up to today: delivery day D depends on market day D-1.
DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
# Registered-model name prefix per target (price keeps the library default).
REGISTRY_PREFIX = {"price": "optibid-forecast", "load": "optibid-forecast-load"}


def _zone_days(frame: pd.DataFrame, zone: str, timezone: str) -> int:
    local = frame.loc[frame[ID_COL] == zone, TIME_COL].dt.tz_convert(timezone).dt.tz_localize(None)
    return int(local.dt.normalize().nunique())


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
    if not 1 <= config.horizon_hours <= 168:
        raise dg.Failure(f"horizon_hours must be within 1..168, got {config.horizon_hours}")
    unknown = set(config.targets) - set(wh.TARGETS)
    if unknown:
        raise dg.Failure(f"unknown targets {sorted(unknown)}; choose from {wh.TARGETS}")
    day = date.fromisoformat(context.partition_key)
    horizon_days = math.ceil(config.horizon_hours / 24)
    day_ts = pd.Timestamp(day)
    # Wide enough for every zone-local day (UTC-12..+14); each zone cuts its own local day.
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=config.history_days + 1)
    end = day_ts.tz_localize("UTC") + pd.Timedelta(days=horizon_days + 1)
    with warehouse.connect() as conn:
        try:
            facts = {t: wh.fact_frame(conn, t, start, end, config.zones or None) for t in ("price", "load")}
        except wh.MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        tzs = wh.zone_timezones(conn)
        chosen = wh.champions(conn) if config.use_champions else {}
        published: list[wh.ZoneForecast] = []
        skipped: dict[str, str] = {}
        load_forecasts: dict[str, pd.DataFrame] = {}
        for target in sorted(config.targets, key=lambda t: t != "load"):
            frame = facts[target]
            for zone in sorted(frame[ID_COL].unique()):
                tz = tzs.get(zone)
                if tz is None:
                    skipped[f"{zone}/{target}"] = "zone missing from silver.ref__zones"
                    continue
                origin = local_day_hours_utc(day_ts, tz)[0]
                zone_rows = frame[(frame[ID_COL] == zone) & (frame[TIME_COL] < origin)]
                if target == "price":
                    zone_rows = _with_load(zone_rows, facts["load"], load_forecasts.get(zone), zone, origin)
                try:
                    fc = wh.forecast_zone(
                        zone_rows,
                        zone,
                        target,
                        day_ts,
                        tz,
                        horizon_days=horizon_days,
                        calibration_days=config.calibration_days,
                        champion=chosen.get((zone, target)),
                        fallback_models=config.fallback_models,
                    )
                except ForecastDataError as exc:
                    skipped[f"{zone}/{target}"] = str(exc)
                    continue
                for note in fc.notes:
                    context.log.info(f"{zone}/{target}: {note}")
                published.append(fc)
                if target == "load":
                    load_forecasts[zone] = fc.rows
        if not published:
            raise dg.Failure(
                description=f"no zone could be forecast for {day}",
                metadata={"skipped": dg.MetadataValue.json(skipped)},
            )
        rows = 0
        for fc in published:
            rows += wh.replace_forecasts(
                conn, day, fc.zone, fc.target, wh.gold_forecast_rows(fc, context.run_id, day)
            )
        recent = {
            t: wh.stored_forecasts(conn, t, day_ts.tz_localize("UTC") - pd.Timedelta(days=8), end)
            for t in config.targets
        }
    coverage, plots = _evaluate_and_plot(context.partition_key, recent, facts)
    summary = pd.DataFrame(
        [
            {
                "zone": fc.zone,
                "target": fc.target,
                "model": fc.model,
                "source": fc.source,
                "version": fc.model_version,
                "hours": len(fc.rows),
            }
            for fc in published
        ]
    )
    return dg.MaterializeResult(
        metadata={
            "delivery_day": dg.MetadataValue.text(str(day)),
            "rows": dg.MetadataValue.int(rows),
            "zones": dg.MetadataValue.json(sorted({fc.zone for fc in published})),
            "models": dg.MetadataValue.json(
                {str(k): int(v) for k, v in summary.groupby("model").size().items()}
            ),
            "forecasts": dg.MetadataValue.md(_md_table(summary)),
            "skipped": dg.MetadataValue.json(skipped),
            "coverage_latest_known_day": dg.MetadataValue.md(_md_table(coverage)),
            "plot": dg.MetadataValue.path(plots[0]) if plots else dg.MetadataValue.null(),
            "plots": dg.MetadataValue.json(plots),
        }
    )


def _with_load(
    prices: pd.DataFrame,
    load: pd.DataFrame,
    load_forecast: pd.DataFrame | None,
    zone: str,
    origin: pd.Timestamp,
) -> pd.DataFrame:
    """Price rows plus the `load` feature: actual load in the history, the load forecast for the horizon."""
    if load_forecast is None:
        return prices
    history = load[(load[ID_COL] == zone) & (load[TIME_COL] < origin)]
    ahead = load_forecast[[ID_COL, TIME_COL, "y_hat"]].rename(columns={"y_hat": TARGET_COL})
    merged = wh.with_load_feature(prices, pd.concat([history, ahead], ignore_index=True))
    horizon = ahead.assign(**{TARGET_COL: float("nan")}).merge(
        ahead.rename(columns={TARGET_COL: wh.LOAD_FEATURE}), on=[ID_COL, TIME_COL]
    )
    if merged[wh.LOAD_FEATURE].isna().all():
        return prices
    return pd.concat([merged, horizon], ignore_index=True)


def _evaluate_and_plot(
    partition_key: str, recent: dict[str, pd.DataFrame], facts: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, list[str]]:
    """Coverage on the latest day with both a published forecast and actuals, and one PNG per zone/target."""
    from ml.forecasting.tracking import forecast_plot_png

    folder = Path(get_settings().reports_dir) / "forecasts" / partition_key
    folder.mkdir(parents=True, exist_ok=True)
    records, plots = [], []
    for target, stored in recent.items():
        if stored.empty:
            continue
        actual = facts[target]
        for zone, rows in stored.groupby(ID_COL, sort=True):
            known = rows.merge(actual[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="inner")
            if not known.empty:
                last = known["delivery_date"].max()
                stats = wh.interval_coverage(rows[rows["delivery_date"] == last], actual)
                records.append({"zone": zone, "target": target, "delivery_date": str(last), **stats})
            plot_rows = rows.merge(actual[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="left")
            path = folder / f"forecast_{target}_{zone}.png"
            forecast_plot_png(plot_rows.assign(model="published"), str(zone), "published", path, last_days=8)
            plots.append(str(path))
    return pd.DataFrame(records), plots


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
    from ml.forecasting.tracking import log_backtest_run, register_champion

    if config.selection_metric not in SELECTION_METRICS:
        raise dg.Failure(f"selection_metric must be one of {SELECTION_METRICS}, got {config.selection_metric!r}")
    uri = mlflow.uri()
    with warehouse.connect() as conn:
        latest = wh.latest_fact_time(conn, "price")
        if latest is None:
            raise dg.Failure("gold.fct_prices_hourly holds no public prices: nothing to backtest")
        start = latest - pd.Timedelta(days=config.history_days)
        zones = config.zones or None
        try:
            facts = {
                t: wh.fact_frame(conn, t, start, latest + pd.Timedelta(hours=1), zones) for t in config.targets
            }
            load = (
                facts.get("load")
                if "load" in facts
                else wh.fact_frame(conn, "load", start, latest + pd.Timedelta(hours=1), zones)
            )
        except wh.MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        tzs = wh.zone_timezones(conn)
    table, skipped = [], {}
    selections: list[tuple[str, ZoneSelection, str, str]] = []
    for target in config.targets:
        frame = facts[target] if target == "load" else wh.with_load_feature(facts[target], load)
        for zone in sorted(frame[ID_COL].unique()):
            tz = tzs.get(zone, "UTC")
            rows = wh.zone_frame(frame, zone)
            window = complete_day_window(rows, tz, config.days)
            if window is None:
                skipped[f"{zone}/{target}"] = "no complete local day"
                continue
            try:
                chosen = select_zone(
                    rows, zone, *window, tz, config.models, config.selection_metric, config.warmup_days
                )
            except (ForecastDataError, ValueError) as exc:
                skipped[f"{zone}/{target}"] = str(exc)
                continue
            for note in chosen.notes:
                context.log.info(f"{zone}/{target}: {note}")
            label = zone if target == "price" else f"{zone}-load"
            run_id = log_backtest_run(
                chosen.result if target == "price" else relabelled(chosen.result, label),
                uri,
                zone=label,
                pipeline=chosen.pipeline,
                run_name=f"backtest-{label}-{context.run_id[:8]}",
            )
            version = register_champion(run_id, zone, uri, prefix=REGISTRY_PREFIX[target])
            selections.append((target, chosen, run_id, version))
            for model, metrics in chosen.metrics_by_model().items():
                table.append(
                    {
                        "zone": zone,
                        "target": target,
                        "model": model,
                        **{k: metrics.get(k) for k in ("mae", "rmae", "coverage80", "coverage95")},
                        "champion": model == chosen.champion,
                    }
                )
    if not selections:
        raise dg.Failure(
            description="no zone could be backtested", metadata={"skipped": dg.MetadataValue.json(skipped)}
        )
    with warehouse.connect() as conn:
        for target, chosen, run_id, version in selections:
            first, end = (pd.Timestamp(chosen.result.settings[k]).date() for k in ("start", "end"))
            wh.insert_backtest(
                conn,
                context.run_id,
                chosen.zone,
                target,
                (first, end),
                chosen.candidates,
                chosen.metrics_by_model(),
                run_id,
                chosen.result.wall_seconds,
            )
            wh.insert_model_selection(
                conn,
                chosen.zone,
                target,
                chosen.champion_key,
                context.run_id,
                chosen.metric,
                chosen.value,
                run_id,
                version,
            )
    return dg.MaterializeResult(
        metadata={
            "metrics": dg.MetadataValue.md(_md_table(pd.DataFrame(table))),
            "champions": dg.MetadataValue.json({f"{c.zone}/{t}": c.champion_key for t, c, _, _ in selections}),
            "candidates": dg.MetadataValue.json({f"{c.zone}/{t}": c.candidates for t, c, _, _ in selections}),
            "registry_versions": dg.MetadataValue.json({f"{c.zone}/{t}": v for t, c, _, v in selections}),
            "mlflow_tracking_uri": dg.MetadataValue.text(uri),
            "skipped": dg.MetadataValue.json(skipped),
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
    "Runs after Monday 03:00 once gold has updated since.",
)
def drift_report(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: DriftConfig
) -> dg.MaterializeResult:
    from ml.monitoring.drift import drift_by_zone

    with warehouse.connect() as conn:
        latest = wh.latest_fact_time(conn, "price")
        if latest is None:
            raise dg.Failure("gold.fct_prices_hourly holds no public prices: nothing to compare")
        end = latest + pd.Timedelta(hours=1)
        split = end - pd.Timedelta(days=config.current_days)
        start = split - pd.Timedelta(days=config.reference_days)
        try:
            frame = wh.with_load_feature(
                wh.fact_frame(conn, "price", start, end), wh.fact_frame(conn, "load", start, end)
            )
        except wh.MissingFactsError as exc:
            raise dg.Failure(str(exc)) from exc
        stored = wh.stored_forecasts(conn, "price", start, end).assign(model="published")
    reference, current = frame[frame[TIME_COL] < split], frame[frame[TIME_COL] >= split]
    ref_fc, cur_fc = stored[stored[TIME_COL] < split], stored[stored[TIME_COL] >= split]
    with_errors = len(ref_fc) >= 10 and len(cur_fc) >= 10
    folder = Path(get_settings().reports_dir) / "drift" / f"{split:%Y-%m-%d}"
    began = time.perf_counter()
    out = drift_by_zone(
        reference,
        current,
        folder,
        ref_fc if with_errors else None,
        cur_fc if with_errors else None,
        model="published" if with_errors else None,
    )
    context.log.info(f"drift reports for {len(out)} zones in {time.perf_counter() - began:.1f}s")
    max_share = float(out["drift_share"].max()) if not out.empty else 0.0
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
            "report_dir": dg.MetadataValue.path(str(folder)),
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
    return dg.AssetCheckResult(
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "threshold": dg.MetadataValue.float(threshold),
            "zones_over_threshold": dg.MetadataValue.json(over),
            "zones_checked": dg.MetadataValue.int(len(shares)),
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
    window = context.partition_time_window
    first, end = window.start.date(), window.end.date()
    days = [first + timedelta(days=i) for i in range((end - first).days)]
    rows_by_day: dict[str, int] = {}
    methods: dict[str, str] = {}
    flagged: list[pd.DataFrame] = []
    with warehouse.connect() as conn:
        for day in days:
            written, gold, day_methods = _replace_anomalies_of_day(context, conn, day)
            rows_by_day[day.isoformat()] = written
            methods.update(day_methods)
            flagged.append(gold)
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


def _replace_anomalies_of_day(
    context: dg.AssetExecutionContext, conn: psycopg.Connection, day: date
) -> tuple[int, pd.DataFrame, dict[str, str]]:
    """Detect the day's anomalies and replace them in gold.anomalies: (rows written, rows, method per series)."""
    from ml.monitoring.anomalies import detect_anomalies

    day_ts = pd.Timestamp(day)
    # A week of baseline before the day, and a day after it for level shifts (confirmed a day late).
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=9)
    end = day_ts.tz_localize("UTC") + pd.Timedelta(days=2)
    found, methods = [], {}
    tzs = wh.zone_timezones(conn)
    for target in wh.TARGETS:
        try:
            frame = wh.fact_frame(conn, target, start, end)
        except wh.MissingFactsError as exc:
            context.log.warning(str(exc))
            continue
        stored = wh.stored_forecasts(conn, target, start, end)
        for zone in sorted(frame[ID_COL].unique()):
            hours = local_day_hours_utc(day_ts, tzs.get(zone, "UTC"))
            rows = frame[frame[ID_COL] == zone]
            fc = stored[stored[ID_COL] == zone]
            # Forecast residuals are the better signal, but only when forecasts cover the whole window.
            use_fc = not fc.empty and rows[TIME_COL].isin(fc[TIME_COL]).all()
            flagged = detect_anomalies(
                rows,
                fc.assign(model="published") if use_fc else None,
                model="published" if use_fc else None,
            )
            methods[f"{zone}/{target}"] = "forecast residual" if use_fc else "deseasonalised"
            flagged = flagged[flagged[TIME_COL].isin(hours)]
            if not flagged.empty:
                found.append(flagged.assign(target=target))
    out = (
        pd.concat(found, ignore_index=True)
        if found
        else pd.DataFrame(columns=["unique_id", "ds", "kind", "value", "expected", "score", "method", "target"])
    )
    gold = out.rename(columns={ID_COL: "zone", TIME_COL: "ts_utc"}).assign(market_date=day)
    written = wh.replace_anomalies(conn, day, wh.TARGETS, gold)
    return written, gold, methods
