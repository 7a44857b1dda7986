-- What the analyst API serves of model monitoring beyond 060_ml.sql: the weekly drift summaries (written by
-- the ml.drift_report asset through ml/monitoring/drift_summaries.py) and the current champion per zone.
-- Market-level data (no org_id), so no row-level security; the API role only reads them.

-- One row per (drift window, zone): the summary `ml.monitoring.drift.drift_by_zone` computes. A re-run of
-- the same window replaces its rows. current_end identifies the window (the report compares
-- [reference_start, current_start) with [current_start, current_end)).
CREATE TABLE IF NOT EXISTS ml.drift_summaries (
    zone                text NOT NULL,
    reference_start     timestamptz NOT NULL,
    current_start       timestamptz NOT NULL,
    current_end         timestamptz NOT NULL,
    drift_share         double precision NOT NULL CHECK (drift_share BETWEEN 0 AND 1),
    n_drifted           integer NOT NULL CHECK (n_drifted >= 0),
    n_columns           integer NOT NULL CHECK (n_columns > 0),
    dataset_drift       boolean NOT NULL,
    target_drift        boolean NOT NULL,
    error_drift         boolean,
    drifted_columns     text NOT NULL DEFAULT '',
    computed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (current_end, zone),
    CHECK (reference_start <= current_start AND current_start <= current_end)
);
CREATE INDEX IF NOT EXISTS drift_summaries_zone_idx ON ml.drift_summaries (zone, current_end);

-- The model the forecasts asset uses now per zone and target: the newest ml.model_selection row (the same
-- rule `ml.forecasting` applies when it reads the champion).
CREATE OR REPLACE VIEW ml.current_models AS
SELECT DISTINCT ON (zone, target)
    zone, target, model, selected_at, backtest_run_id, metric, metric_value, mlflow_run_id, registry_version
FROM ml.model_selection
ORDER BY zone, target, selected_at DESC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api') THEN
        GRANT SELECT ON ml.drift_summaries, ml.current_models TO optibid_api;
    END IF;
END
$$;
