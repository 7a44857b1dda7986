-- The analyst's ML surface: on-demand forecast jobs, accuracy tracking with a shadow challenger, per-hour
-- forecast explanations, and embeddings of optimization runs for similarity search.

-- On-demand forecasts (serving_api/routers/forecast_jobs.py, ml/forecasting/on_demand.py). One row per job
-- of an organization; the API inserts it queued and updates it as the job runs. RLS: a caller sees and
-- changes only its own organization's jobs.
CREATE TABLE IF NOT EXISTS ml.forecast_jobs (
    job_id          text PRIMARY KEY,
    org_id          text NOT NULL,
    requested_by    text NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out')),
    request         jsonb NOT NULL,
    result          jsonb,
    error           jsonb,
    time_limit_s    double precision NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    wall_seconds    double precision
);
CREATE INDEX IF NOT EXISTS forecast_jobs_org_created_idx ON ml.forecast_jobs (org_id, created_at);
ALTER TABLE ml.forecast_jobs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ml.forecast_jobs;
CREATE POLICY org_isolation ON ml.forecast_jobs
    USING (org_id = current_setting('optibid.org_id', true))
    WITH CHECK (org_id = current_setting('optibid.org_id', true));

-- Challenger forecasts published in shadow beside the champion's gold.forecasts (never served as the
-- forecast; scored like it). Public market data, like gold.forecasts.
CREATE TABLE IF NOT EXISTS ml.shadow_forecasts (
    zone            text NOT NULL,
    ts_utc          timestamptz NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    model           text NOT NULL,
    model_version   text,
    run_id          text NOT NULL,
    y_hat           double precision,
    delivery_date   date NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, target, ts_utc, model, run_id)
);
CREATE INDEX IF NOT EXISTS shadow_forecasts_delivery_idx ON ml.shadow_forecasts (delivery_date, zone, target);

-- Accuracy of every published (role 'champion') and shadow ('challenger') forecast once actuals exist: one
-- row per zone, target, model, role, horizon day (1 = the delivery day of the run, 2 = the day after, ...)
-- and scored local day. Replaced per scored day by ml/forecasting/accuracy.py.
CREATE TABLE IF NOT EXISTS ml.forecast_accuracy (
    zone            text NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    model           text NOT NULL,
    role            text NOT NULL CHECK (role IN ('champion', 'challenger')),
    horizon_day     integer NOT NULL CHECK (horizon_day BETWEEN 1 AND 7),
    scored_date     date NOT NULL,
    n_hours         integer NOT NULL CHECK (n_hours > 0),
    mae             double precision NOT NULL,
    rmse            double precision NOT NULL,
    smape           double precision,
    bias            double precision NOT NULL,
    scored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, target, model, role, horizon_day, scored_date)
);
CREATE INDEX IF NOT EXISTS forecast_accuracy_date_idx ON ml.forecast_accuracy (scored_date);

-- Every champion/challenger decision of ml/forecasting/promotion.py, promoted or not, with its evidence.
CREATE TABLE IF NOT EXISTS ml.promotion_decisions (
    decided_at      timestamptz NOT NULL DEFAULT now(),
    zone            text NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    champion        text NOT NULL,
    challenger      text NOT NULL,
    days            integer NOT NULL,
    champion_mae    double precision,
    challenger_mae  double precision,
    dm_statistic    double precision,
    p_value         double precision,
    promoted        boolean NOT NULL,
    reason          text NOT NULL,
    run_id          text NOT NULL,
    PRIMARY KEY (zone, target, decided_at)
);

-- Per forecast hour, the contribution of each input (ml/forecasting/explain.py): exact for LEAR,
-- integrated gradients for the DNN; feature '(baseline)' holds the part no input explains, so the rows of
-- one hour sum to the model's forecast.
CREATE TABLE IF NOT EXISTS ml.forecast_explanations (
    zone            text NOT NULL,
    target          text NOT NULL CHECK (target IN ('price', 'load')),
    delivery_date   date NOT NULL,
    model           text NOT NULL,
    ts_utc          timestamptz NOT NULL,
    feature         text NOT NULL,
    feature_value   double precision,
    contribution    double precision NOT NULL,
    y_hat           double precision NOT NULL,
    method          text NOT NULL,
    run_id          text NOT NULL,
    mlflow_run_id   text,
    PRIMARY KEY (zone, target, delivery_date, model, ts_utc, feature)
);

-- Fixed-length embeddings of optimization runs' inputs (ml/optimization/embedding.py). `features` always
-- holds the vector; where the server ships pgvector, `embedding` is the same vector as a pgvector column
-- (generated), searched with its cosine-distance operator; elsewhere similarity is an exact scan of
-- `features` (the API says which it used).
CREATE TABLE IF NOT EXISTS ml.optimization_run_embeddings (
    run_id              text PRIMARY KEY REFERENCES ml.optimization_runs (run_id) ON DELETE CASCADE,
    org_id              text,
    problem             text NOT NULL,
    embedding_version   integer NOT NULL,
    features            double precision[] NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS optimization_run_embeddings_org_idx
    ON ml.optimization_run_embeddings (org_id, problem, embedding_version);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS vector;
            EXECUTE 'ALTER TABLE ml.optimization_run_embeddings ADD COLUMN IF NOT EXISTS embedding vector(32)
                     GENERATED ALWAYS AS (features::vector(32)) STORED';
        EXCEPTION WHEN insufficient_privilege OR feature_not_supported OR undefined_file THEN
            RAISE NOTICE 'pgvector is available but could not be enabled (%): similarity uses an exact scan',
                SQLERRM;
        END;
    ELSE
        RAISE NOTICE 'pgvector is not installed on this server: optimization-run similarity uses an exact scan';
    END IF;
END
$$;
ALTER TABLE ml.optimization_run_embeddings ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ml.optimization_run_embeddings;
CREATE POLICY org_isolation ON ml.optimization_run_embeddings
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api') THEN
        GRANT SELECT, INSERT, UPDATE ON ml.forecast_jobs TO optibid_api;
        GRANT SELECT ON ml.shadow_forecasts, ml.forecast_accuracy, ml.promotion_decisions,
            ml.forecast_explanations TO optibid_api;
        GRANT SELECT, INSERT ON ml.optimization_run_embeddings TO optibid_api;
        DROP POLICY IF EXISTS api_insert_own_org ON ml.optimization_run_embeddings;
        CREATE POLICY api_insert_own_org ON ml.optimization_run_embeddings AS RESTRICTIVE FOR INSERT
            TO optibid_api WITH CHECK (org_id = current_setting('optibid.org_id', true));
    END IF;
END
$$;

-- Forced row-level security with the owner's unscoped access, as 120_api_hardening.sql does for the tables
-- that existed then: the pipeline (owner, no organization scope) writes every organization's rows; a
-- connection that took an organization scope sees that organization only, whatever its role.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c
        WHERE c.oid IN ('ml.forecast_jobs'::regclass, 'ml.optimization_run_embeddings'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('DROP POLICY IF EXISTS owner_unscoped ON %s', t.rel);
        EXECUTE format(
            'CREATE POLICY owner_unscoped ON %s TO %I'
            ' USING (coalesce(current_setting(''optibid.org_id'', true), '''') = '''')'
            ' WITH CHECK (coalesce(current_setting(''optibid.org_id'', true), '''') = '''')',
            t.rel, t.owner
        );
    END LOOP;
END
$$;
