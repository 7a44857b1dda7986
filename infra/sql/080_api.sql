-- Serving API: credentials, login throttling, cache versions, and the role every API query runs as.

-- The API queries as this role (SET LOCAL ROLE optibid_api inside each transaction). It cannot log in and
-- has no BYPASSRLS, so row-level security applies to every org-scoped table it reads.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api') THEN
        CREATE ROLE optibid_api NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    -- The connecting (migrating) user must be a member to SET ROLE to it.
    EXECUTE format('GRANT optibid_api TO %I', current_user);
END
$$;

-- API keys: only a SHA-256 of the high-entropy secret is stored; the prefix finds the row.
CREATE TABLE IF NOT EXISTS ops.api_keys (
    key_id                  text PRIMARY KEY,
    org_id                  text NOT NULL REFERENCES silver.ref__organizations (org_id),
    name                    text NOT NULL,
    prefix                  text NOT NULL UNIQUE,
    key_hash                text NOT NULL,
    role                    text NOT NULL CHECK (role IN ('admin', 'analyst', 'trader', 'viewer')),
    rate_limit_per_minute   integer NOT NULL DEFAULT 600 CHECK (rate_limit_per_minute > 0),
    created_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz,
    revoked_at              timestamptz,
    last_used_at            timestamptz
);

-- Refresh tokens (opaque, stored hashed). Each login starts a family; every refresh rotates within it.
CREATE TABLE IF NOT EXISTS ops.refresh_tokens (
    token_id        text PRIMARY KEY,
    family_id       text NOT NULL,
    user_id         text NOT NULL REFERENCES ops.users (user_id),
    org_id          text NOT NULL REFERENCES silver.ref__organizations (org_id),
    token_hash      text NOT NULL UNIQUE,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    revoked_at      timestamptz,
    replaced_by     text
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family_idx ON ops.refresh_tokens (family_id);

-- Every login attempt (also for unknown e-mails), for the 5-per-15-minutes lockout.
CREATE TABLE IF NOT EXISTS ops.login_attempts (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    client_ip   text,
    at          timestamptz NOT NULL DEFAULT now(),
    success     boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS login_attempts_email_at_idx ON ops.login_attempts (lower(email), at);
CREATE INDEX IF NOT EXISTS login_attempts_ip_at_idx ON ops.login_attempts (client_ip, at);

-- One row per (gold table, market date); gold assets bump it when they re-materialize a partition and the
-- API's cache keys include it (serving_api.cache.bump_table_version).
CREATE TABLE IF NOT EXISTS ops.table_versions (
    table_name  text NOT NULL,
    market_date date NOT NULL,
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, market_date)
);

CREATE INDEX IF NOT EXISTS audit_log_org_at_idx ON ops.audit_log (org_id, at);

-- Row-level security on the org-scoped tables the API reads or owns (table owners are unaffected: login and
-- token lookups run before the caller's organization is known, as the owner).
ALTER TABLE ops.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE silver.ref__assets ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS org_isolation ON ops.api_keys;
CREATE POLICY org_isolation ON ops.api_keys
    USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON ops.refresh_tokens;
CREATE POLICY org_isolation ON ops.refresh_tokens
    USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON ops.users;
CREATE POLICY org_isolation ON ops.users
    USING (org_id = current_setting('optibid.org_id', true));
-- Audit rows without an organization (failed logins of unknown e-mails) are visible to nobody through the API.
DROP POLICY IF EXISTS org_isolation ON ops.audit_log;
CREATE POLICY org_isolation ON ops.audit_log
    USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON silver.ref__assets;
CREATE POLICY org_isolation ON silver.ref__assets
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));

GRANT USAGE ON SCHEMA gold, silver, ops, ml TO optibid_api;
GRANT SELECT ON ALL TABLES IN SCHEMA gold TO optibid_api;
GRANT SELECT ON ALL TABLES IN SCHEMA ml TO optibid_api;
GRANT SELECT ON silver.ref__organizations, silver.ref__zones, silver.ref__nodes, silver.ref__assets TO optibid_api;
GRANT SELECT ON ops.table_versions TO optibid_api;
GRANT SELECT, INSERT, UPDATE ON ops.users, ops.api_keys TO optibid_api;
GRANT SELECT, INSERT ON ops.audit_log TO optibid_api;
GRANT USAGE ON SEQUENCE ops.audit_log_id_seq TO optibid_api;
-- Tables other areas create later (dbt gold models, Python gold assets, ops.uploads) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA gold GRANT SELECT ON TABLES TO optibid_api;
ALTER DEFAULT PRIVILEGES IN SCHEMA ml GRANT SELECT ON TABLES TO optibid_api;
ALTER DEFAULT PRIVILEGES IN SCHEMA ops GRANT SELECT ON TABLES TO optibid_api;

-- ops.uploads (040_uploads.sql) carries org_id and is served by the API: same tenancy policy.
DO $$
BEGIN
    IF to_regclass('ops.uploads') IS NOT NULL THEN
        ALTER TABLE ops.uploads ENABLE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS org_isolation ON ops.uploads;
        CREATE POLICY org_isolation ON ops.uploads
            USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
        GRANT SELECT ON ops.uploads TO optibid_api;
    END IF;
END
$$;
