-- Core schemas and the operational tables every layer shares.
CREATE SCHEMA IF NOT EXISTS bronze;
CREATE SCHEMA IF NOT EXISTS silver;
CREATE SCHEMA IF NOT EXISTS gold;
CREATE SCHEMA IF NOT EXISTS ml;
CREATE SCHEMA IF NOT EXISTS ops;

-- Reference dimensions seeded by `optibid seed` (ingestion/reference.py); gold dimensions build on them.
CREATE TABLE IF NOT EXISTS silver.ref__organizations (
    org_id      text PRIMARY KEY,
    name        text NOT NULL,
    country     text NOT NULL
);

CREATE TABLE IF NOT EXISTS silver.ref__zones (
    zone          text PRIMARY KEY,
    name          text NOT NULL,
    market        text NOT NULL,
    iso           text NOT NULL,
    timezone      text NOT NULL,
    currency      text NOT NULL,
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL,
    price_floor   double precision NOT NULL,
    price_cap     double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS silver.ref__nodes (
    node        text PRIMARY KEY,
    zone        text NOT NULL REFERENCES silver.ref__zones (zone),
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS silver.ref__assets (
    asset_id        text PRIMARY KEY,
    org_id          text NOT NULL REFERENCES silver.ref__organizations (org_id),
    zone            text NOT NULL REFERENCES silver.ref__zones (zone),
    name            text NOT NULL,
    technology      text NOT NULL CHECK (technology IN ('solar', 'wind', 'thermal', 'hydro', 'battery')),
    capacity_mw     double precision NOT NULL CHECK (capacity_mw > 0),
    energy_mwh      double precision,
    marginal_cost   double precision
);

CREATE TABLE IF NOT EXISTS ops.users (
    user_id         text PRIMARY KEY,
    org_id          text NOT NULL REFERENCES silver.ref__organizations (org_id),
    email           text NOT NULL UNIQUE,
    role            text NOT NULL CHECK (role IN ('admin', 'analyst', 'trader', 'viewer')),
    password_hash   text,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per ingestion run of any source, for the audit trail and the UI.
CREATE TABLE IF NOT EXISTS ops.ingestion_runs (
    batch_id        text PRIMARY KEY,
    source          text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    rows_read       bigint NOT NULL DEFAULT 0,
    rows_written    bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE IF NOT EXISTS ops.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    org_id      text,
    actor       text,
    action      text NOT NULL,
    target      text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
