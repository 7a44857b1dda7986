"""OptiBid day-ahead price forecasting (library code: no Dagster here; assets/forecasting.py wraps these calls).

Frame formats
-------------
Input, the *long frame*: one row per (zone, hour)
    unique_id  str                 zone / node id
    ds         datetime64[ns, UTC] start of the delivery hour, UTC
    y          float               price (NaN for hours not yet known)
    <other>    float               exogenous day-ahead forecasts (load, wind, ...), known before the day
Output, the *forecast frame* (FORECAST_COLUMNS): one row per (zone, hour, model)
    unique_id, ds, model, y_hat, q10, q50, q90, lo80, hi80, lo95, hi95
    (lo80 = q10, hi80 = q90, lo95/hi95 = 2.5%/97.5% quantiles; always lo95 <= lo80 <= q50 <= hi80 <= hi95).
    Backtests add y (actual), y_naive (weekly naive reference) and origin (forecast origin, UTC).

Days are market-local days in a `timezone` (23/24/25 hours); see `ml.forecasting.data` for DST handling.
The forecast for local day d uses y strictly before d's local midnight and the exogenous values of d.

Public API (what the assets call)
---------------------------------
    read_price_csv(path, unique_id=None, timezone="UTC") -> long frame      # epftoolbox-shaped CSV
    validated_long_frame(frame) -> long frame                                 # checks + normalises
    production_pipeline(timezone, recalibrate_every_days=1, alpha_refresh_days=28, dnn_refit_days=7)
        -> ForecastPipeline (mean of LEAR and DNN; primary model "ensemble")
    ForecastPipeline(models, ensemble="median"|"inverse_error"|None, timezone, recalibrate_every_days, ...)
        .forecast_day(frame, day, calibration_days=28) -> forecast frame      # daily asset: gold.forecasts
        .backtest(frame, start, end, warmup_days=28) -> BacktestResult       # backtest asset
    BacktestResult: .forecasts, .metrics {"overall","per_hour","per_day"}, .settings, .wall_seconds
    forecaster_for(name) -> Forecaster
        # lear | dnn | seasonal_naive auto_ets auto_arima mstl auto_theta | nhits nbeatsx tft
    metrics_of(rows) / backtest_metrics(rows, timezone)   # MAE RMSE sMAPE rMAE pinball coverage
    ml.forecasting.selection: select_zone(frame, zone, start, end, timezone, models, metric) -> ZoneSelection
        # the production ensemble vs single models on the same origins; a single model is champion only if
        # it beats the ensemble. candidate_pipeline(name, timezone) -> the pipeline that publishes `name`.
    ml.forecasting.tracking: log_backtest_run(result, tracking_uri, zone, pipeline) -> run_id,
        register_champion(run_id, zone, tracking_uri) -> version, load_champion(zone, tracking_uri)
    ml.forecasting.cli: Typer `app` (mount as `optibid forecast`; command `backtest`)
    ml.monitoring.drift.drift_by_zone(reference, current, report_dir, ...) -> DataFrame (drift_share, ...)
    ml.monitoring.anomalies.detect_anomalies(frame, forecasts=None) -> DataFrame for gold.anomalies

Against the warehouse (reads in `ml.warehouse_reads`, writes in `ml.forecasting.warehouse`)
    ml.forecasting.daily: forecast_delivery_day(conn, day, ...) -> DeliveryDayForecasts   # gold/forecasts
        forecast_zone(frame, zone, target, day, timezone, ...) -> ZoneForecast, publish_forecasts(conn, ...)
    ml.forecasting.backtests: read_backtest_inputs, backtest_zones, store_selections   # ml/backtests

On demand (`ml.forecasting.on_demand`; the API's forecast jobs)
    uploaded_series(timestamps, values, exogenous, future_exogenous, horizon_hours, timezone) -> UploadedSeries
        # raises ForecastRequestError(field, message): too little history, gaps, horizon out of range
    run_forecast_job(request, database_url, org_id) -> {"status", "result" | "error"}   # in a worker process
"""

from ml.forecasting.data import (
    FORECAST_COLUMNS,
    ForecastDataError,
    local_day_hours_utc,
    read_price_csv,
    validated_long_frame,
)
from ml.forecasting.metrics import backtest_metrics, metrics_of
from ml.forecasting.models import (
    DNN,
    LEAR,
    NEURAL_MODELS,
    STATS_MODELS,
    Forecaster,
    NeuralForecastModels,
    StatsForecastModels,
    forecaster_for,
)
from ml.forecasting.on_demand import (
    MAX_EXOGENOUS,
    MAX_HISTORY_HOURS,
    MIN_HISTORY_DAYS,
    ForecastRequestError,
    check_history_hours,
    run_forecast_job,
    uploaded_series,
)
from ml.forecasting.on_demand import MAX_HORIZON_HOURS as MAX_FORECAST_HORIZON_HOURS
from ml.forecasting.pipeline import BacktestResult, ForecastPipeline, production_pipeline

__all__ = [
    "DNN",
    "FORECAST_COLUMNS",
    "LEAR",
    "MAX_EXOGENOUS",
    "MAX_FORECAST_HORIZON_HOURS",
    "MAX_HISTORY_HOURS",
    "MIN_HISTORY_DAYS",
    "NEURAL_MODELS",
    "STATS_MODELS",
    "BacktestResult",
    "ForecastDataError",
    "ForecastPipeline",
    "ForecastRequestError",
    "Forecaster",
    "NeuralForecastModels",
    "StatsForecastModels",
    "backtest_metrics",
    "check_history_hours",
    "forecaster_for",
    "local_day_hours_utc",
    "metrics_of",
    "production_pipeline",
    "read_price_csv",
    "run_forecast_job",
    "uploaded_series",
    "validated_long_frame",
]
