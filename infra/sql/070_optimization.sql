-- Optimization runs (ml.optimization_runs) and their results (gold.*), written by ml/optimization/runs.py
-- frames. Every result row carries the run it came from and the owning organization (row-level security).
CREATE TABLE IF NOT EXISTS ml.optimization_runs (
    run_id          text PRIMARY KEY,
    org_id          text,
    problem         text NOT NULL CHECK (problem IN ('storage_dispatch', 'bid_curves', 'unit_commitment')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL CHECK (status IN ('optimal', 'feasible', 'infeasible', 'unbounded', 'not_solved')),
    objective       double precision,
    relative_gap    double precision,
    solve_time_s    double precision NOT NULL,
    hit_time_limit  boolean NOT NULL DEFAULT false,
    solver          text NOT NULL,
    options         jsonb NOT NULL,
    inputs          jsonb NOT NULL,
    outputs         jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS optimization_runs_org_problem_idx ON ml.optimization_runs (org_id, problem, created_at);

CREATE TABLE IF NOT EXISTS gold.storage_schedules (
    run_id            text NOT NULL REFERENCES ml.optimization_runs (run_id) ON DELETE CASCADE,
    org_id            text NOT NULL,
    asset_id          text NOT NULL,
    interval_index    integer NOT NULL CHECK (interval_index >= 0),
    interval_start    timestamptz,
    interval_minutes  integer NOT NULL CHECK (interval_minutes > 0),
    price             double precision NOT NULL,
    charge_mw         double precision NOT NULL CHECK (charge_mw >= 0),
    discharge_mw      double precision NOT NULL CHECK (discharge_mw >= 0),
    net_mw            double precision NOT NULL,
    soc_mwh           double precision NOT NULL,
    revenue           double precision NOT NULL,
    energy_value      double precision,
    binding           text NOT NULL DEFAULT '',
    rationale         text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, asset_id, interval_index)
);

CREATE TABLE IF NOT EXISTS gold.bid_curves (
    run_id          text NOT NULL REFERENCES ml.optimization_runs (run_id) ON DELETE CASCADE,
    org_id          text NOT NULL,
    zone            text NOT NULL,
    market          text NOT NULL,
    currency        text NOT NULL,
    asset_id        text NOT NULL,
    asset_type      text NOT NULL CHECK (asset_type IN ('renewable', 'thermal', 'storage')),
    hour            integer NOT NULL CHECK (hour >= 0),
    delivery_start  timestamptz,
    step            integer NOT NULL CHECK (step >= 0),
    price           double precision NOT NULL,
    quantity_mw     double precision NOT NULL,
    PRIMARY KEY (run_id, asset_id, hour, step)
);

CREATE TABLE IF NOT EXISTS gold.unit_commitment (
    run_id          text NOT NULL REFERENCES ml.optimization_runs (run_id) ON DELETE CASCADE,
    org_id          text NOT NULL,
    unit_id         text NOT NULL,
    hour            integer NOT NULL CHECK (hour >= 0),
    hour_start      timestamptz,
    is_on           boolean NOT NULL,
    started         boolean NOT NULL,
    output_mw       double precision NOT NULL CHECK (output_mw >= 0),
    cost            double precision NOT NULL,
    marginal_price  double precision,
    PRIMARY KEY (run_id, unit_id, hour)
);

-- Tenancy (docs/data_contracts.md): a caller sees public rows and its own organization's rows.
ALTER TABLE ml.optimization_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE gold.storage_schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE gold.bid_curves ENABLE ROW LEVEL SECURITY;
ALTER TABLE gold.unit_commitment ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ml.optimization_runs;
CREATE POLICY org_isolation ON ml.optimization_runs
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON gold.storage_schedules;
CREATE POLICY org_isolation ON gold.storage_schedules
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON gold.bid_curves;
CREATE POLICY org_isolation ON gold.bid_curves
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON gold.unit_commitment;
CREATE POLICY org_isolation ON gold.unit_commitment
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
