-- Forecasting and monitoring outputs (assets/ml.py via ml/forecasting/warehouse.py). All rows are public
-- market-level data (no org_id), so no row-level security; the API role only reads them.

-- Published day-ahead forecasts. One run (Dagster run id) publishes one model per zone and target for a
-- delivery-day partition; re-running the partition replaces its rows (delete by delivery_date/zone/target,
-- then insert). delivery_date is that partition (the first zone-local day of the run's horizon, which may
-- span up to 7 days); rows written by other tools may leave it NULL.
CREATE TABLE IF NOT EXISTS gold.forecasts (
    zone            text NOT NULL,
    ts_utc          timestamptz NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    model           text NOT NULL,
    model_version   text,
    run_id          text NOT NULL,
    y_hat           double precision,
    q10             double precision,
    q50             double precision,
    q90             double precision,
    lo80            double precision,
    hi80            double precision,
    lo95            double precision,
    hi95            double precision,
    delivery_date   date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, target, ts_utc, model, run_id),
    CHECK (lo95 IS NULL OR hi95 IS NULL OR lo95 <= hi95),
    CHECK (lo80 IS NULL OR hi80 IS NULL OR lo80 <= hi80)
);
CREATE INDEX IF NOT EXISTS forecasts_delivery_idx ON gold.forecasts (delivery_date, zone, target);
CREATE INDEX IF NOT EXISTS forecasts_ts_idx ON gold.forecasts (ts_utc);

-- Flagged hours (ml.monitoring.anomalies). market_date is the daily partition that found them; a re-run of
-- that day replaces its rows.
CREATE TABLE IF NOT EXISTS gold.anomalies (
    zone            text NOT NULL,
    ts_utc          timestamptz NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    kind            text NOT NULL CHECK (kind IN ('spike', 'level_shift')),
    score           double precision NOT NULL,
    value           double precision,
    expected        double precision,
    method          text NOT NULL,
    market_date     date NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, target, ts_utc, kind)
);
CREATE INDEX IF NOT EXISTS anomalies_market_date_idx ON gold.anomalies (market_date);

-- One row per (backtest run, zone, target): the rolling-origin window, the models compared and their
-- overall metrics ({model: {mae, rmae, coverage80, ...}}), and the MLflow run that holds the artifacts.
CREATE TABLE IF NOT EXISTS ml.backtests (
    run_id          text NOT NULL,
    zone            text NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    window_start    date NOT NULL,
    window_end      date NOT NULL,
    models          text[] NOT NULL,
    metrics         jsonb NOT NULL,
    mlflow_run_id   text,
    wall_seconds    double precision,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, zone, target)
);

-- The champion per zone and target chosen by a backtest (newest selected_at wins); the forecasts asset
-- reads it. registry_version is the MLflow registered-model version aliased `champion`.
CREATE TABLE IF NOT EXISTS ml.model_selection (
    zone                text NOT NULL,
    target              text NOT NULL CHECK (target IN ('price', 'load')),
    model               text NOT NULL,
    selected_at         timestamptz NOT NULL DEFAULT now(),
    backtest_run_id     text NOT NULL,
    metric              text NOT NULL,
    metric_value        double precision,
    mlflow_run_id       text,
    registry_version    text,
    PRIMARY KEY (zone, target, selected_at)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api') THEN
        GRANT USAGE ON SCHEMA gold, ml TO optibid_api;
        GRANT SELECT ON gold.forecasts, gold.anomalies, ml.backtests, ml.model_selection TO optibid_api;
    END IF;
END
$$;
