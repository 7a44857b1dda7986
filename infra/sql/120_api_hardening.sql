-- Serving API, defence in depth: the API never reads as the tables' owner, org scope is forced, and the few
-- lookups that must run before the caller's organization is known go through narrow SECURITY DEFINER
-- functions instead of owner access.
--
-- * Every connection the API opens does a session-level `SET ROLE optibid_api` (serving_api.deps), so a
--   query that forgets `set_org_scope` runs as the RLS-bound API role with no organization: no org rows.
-- * FORCE ROW LEVEL SECURITY on the org-scoped tables of ops/silver/ml and the optimization gold tables, so
--   a non-superuser owner is bound too. The owner keeps platform-wide access only while it has NOT taken an
--   organization scope (`owner_unscoped`): the pipeline and the CLI load as before, while a connection that
--   set `optibid.org_id` sees that organization only, whatever its role. (Superusers bypass RLS in any
--   case: run the platform as a non-superuser owner in production.)
-- * The `api_auth` functions are owned by `optibid_auth`, a NOLOGIN role whose only rights are the rows and
--   columns those functions need; the API role may execute them and nothing else of it.
-- * No default privileges on future `ops` tables: each table the API reads is granted explicitly here.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_auth') THEN
        CREATE ROLE optibid_auth NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently in another database of this cluster
END
$$;
DO $$
BEGIN
    -- The migrating user hands function ownership to optibid_auth: it must be a member.
    EXECUTE format('GRANT optibid_auth TO %I', current_user);
END
$$;

-- --- privileges of the API role on ops: explicit per table, nothing by default --------------------------
DO $$
DECLARE
    grantor text;
BEGIN
    FOR grantor IN
        SELECT DISTINCT pg_get_userbyid(d.defaclrole)
        FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
        WHERE n.nspname = 'ops' AND d.defaclobjtype = 'r'
    LOOP
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA ops REVOKE SELECT ON TABLES FROM optibid_api', grantor
        );
    END LOOP;
END
$$;
REVOKE ALL ON ALL TABLES IN SCHEMA ops FROM optibid_api;
GRANT SELECT ON ops.table_versions, ops.uploads, ops.quarantine, ops.alerts TO optibid_api;
GRANT SELECT, INSERT, UPDATE ON ops.users, ops.api_keys TO optibid_api;
GRANT SELECT, INSERT ON ops.audit_log TO optibid_api;

-- --- forced row-level security -------------------------------------------------------------------------
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
          AND (n.nspname IN ('ops', 'silver', 'ml')
               OR c.oid::regclass::text IN ('gold.storage_schedules', 'gold.bid_curves', 'gold.unit_commitment'))
          AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'org_isolation')
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

-- --- optibid_auth: exactly the rows and columns the pre-authentication lookups need ---------------------
GRANT USAGE ON SCHEMA ops TO optibid_auth;
GRANT SELECT, UPDATE (last_used_at) ON ops.api_keys TO optibid_auth;
GRANT SELECT ON ops.users TO optibid_auth;
GRANT SELECT, INSERT, UPDATE (used_at, revoked_at, replaced_by) ON ops.refresh_tokens TO optibid_auth;
GRANT SELECT, INSERT ON ops.login_attempts TO optibid_auth;
GRANT USAGE ON SEQUENCE ops.login_attempts_id_seq TO optibid_auth;
GRANT INSERT ON ops.audit_log TO optibid_auth;
GRANT USAGE ON SEQUENCE ops.audit_log_id_seq TO optibid_auth;

DROP POLICY IF EXISTS auth_lookup ON ops.api_keys;
CREATE POLICY auth_lookup ON ops.api_keys TO optibid_auth USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS auth_lookup ON ops.users;
CREATE POLICY auth_lookup ON ops.users FOR SELECT TO optibid_auth USING (true);
DROP POLICY IF EXISTS auth_lookup ON ops.refresh_tokens;
CREATE POLICY auth_lookup ON ops.refresh_tokens TO optibid_auth USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS auth_lookup ON ops.audit_log;
CREATE POLICY auth_lookup ON ops.audit_log FOR INSERT TO optibid_auth WITH CHECK (true);

CREATE SCHEMA IF NOT EXISTS api_auth;
REVOKE ALL ON SCHEMA api_auth FROM PUBLIC;
GRANT USAGE ON SCHEMA api_auth TO optibid_api;
GRANT USAGE, CREATE ON SCHEMA api_auth TO optibid_auth;

-- API key by its public prefix (the caller compares the secret's digest in constant time).
CREATE OR REPLACE FUNCTION api_auth.api_key_by_prefix(p_prefix text)
RETURNS TABLE (key_id text, org_id text, role text, key_hash text, rate_limit_per_minute integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.key_id, k.org_id, k.role, k.key_hash, k.rate_limit_per_minute FROM ops.api_keys k
    WHERE k.prefix = p_prefix AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
$$;

-- Only a caller holding the key (its digest) can mark it used.
CREATE OR REPLACE FUNCTION api_auth.touch_api_key(p_key_id text, p_key_hash text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.api_keys SET last_used_at = now() WHERE key_id = p_key_id AND key_hash = p_key_hash
$$;

CREATE OR REPLACE FUNCTION api_auth.login_failures(p_email text, p_ip text, p_window interval)
RETURNS TABLE (by_email bigint, by_ip bigint, by_pair bigint, last_pair timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FILTER (WHERE lower(a.email) = p_email),
           count(*) FILTER (WHERE a.client_ip = p_ip),
           count(*) FILTER (WHERE lower(a.email) = p_email AND a.client_ip = p_ip),
           max(a.at) FILTER (WHERE lower(a.email) = p_email AND a.client_ip = p_ip)
    FROM ops.login_attempts a
    WHERE NOT a.success AND a.at > now() - p_window AND (lower(a.email) = p_email OR a.client_ip = p_ip)
$$;

CREATE OR REPLACE FUNCTION api_auth.login_user(p_email text)
RETURNS TABLE (user_id text, org_id text, role text, password_hash text, is_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.user_id, u.org_id, u.role, u.password_hash, u.is_active FROM ops.users u WHERE lower(u.email) = p_email
$$;

-- A login attempt (and its audit row, in the user's organization when the e-mail is known).
CREATE OR REPLACE FUNCTION api_auth.record_login(p_email text, p_ip text, p_success boolean)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.login_attempts (email, client_ip, success) VALUES (p_email, p_ip, p_success);
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    SELECT (SELECT u.org_id FROM ops.users u WHERE lower(u.email) = p_email LIMIT 1), p_email,
           CASE WHEN p_success THEN 'login.success' ELSE 'login.failure' END, p_email,
           jsonb_build_object('ip', p_ip);
$$;

CREATE OR REPLACE FUNCTION api_auth.record_login_backoff(p_email text, p_ip text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    VALUES (NULL, p_email, 'login.backoff', p_email, jsonb_build_object('ip', p_ip))
$$;

-- A new refresh token of an active user; its organization is the user's. NULL when the user is inactive.
CREATE OR REPLACE FUNCTION api_auth.issue_refresh_token(
    p_token_id text, p_family_id text, p_user_id text, p_token_hash text, p_expires_at timestamptz)
RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.refresh_tokens (token_id, family_id, user_id, org_id, token_hash, expires_at)
    SELECT p_token_id, p_family_id, u.user_id, u.org_id, p_token_hash, p_expires_at
    FROM ops.users u WHERE u.user_id = p_user_id AND u.is_active
    RETURNING org_id
$$;

-- The token with this digest, locked for the caller's transaction (rotation is decided under the lock).
CREATE OR REPLACE FUNCTION api_auth.refresh_token_for_update(p_token_hash text)
RETURNS TABLE (token_id text, family_id text, user_id text, org_id text, expires_at timestamptz,
               used_at timestamptz, revoked_at timestamptz, role text, is_active boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.token_id, t.family_id, t.user_id, t.org_id, t.expires_at, t.used_at, t.revoked_at, u.role, u.is_active
    FROM ops.refresh_tokens t JOIN ops.users u ON u.user_id = t.user_id
    WHERE t.token_hash = p_token_hash
    FOR UPDATE OF t
$$;

CREATE OR REPLACE FUNCTION api_auth.rotate_refresh_token(p_token_id text, p_replaced_by text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.refresh_tokens SET used_at = now(), replaced_by = p_replaced_by WHERE token_id = p_token_id
$$;

CREATE OR REPLACE FUNCTION api_auth.revoke_family(p_family_id text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.refresh_tokens SET revoked_at = now() WHERE family_id = p_family_id AND revoked_at IS NULL
$$;

CREATE OR REPLACE FUNCTION api_auth.family_revoked(p_family_id text)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM ops.refresh_tokens t WHERE t.family_id = p_family_id AND t.revoked_at IS NOT NULL)
$$;

-- Revoked families an access token could still be alive for (newest token issued within `p_seconds`).
CREATE OR REPLACE FUNCTION api_auth.revoked_families(p_seconds integer)
RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.family_id FROM ops.refresh_tokens t
    GROUP BY t.family_id
    HAVING bool_or(t.revoked_at IS NOT NULL) AND max(t.issued_at) > now() - make_interval(secs => p_seconds)
$$;

-- Audit row of a session event, in the session's organization, by its user.
CREATE OR REPLACE FUNCTION api_auth.audit_session(p_family_id text, p_action text, p_details jsonb)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    SELECT t.org_id, 'user:' || t.user_id, p_action, p_family_id, p_details
    FROM ops.refresh_tokens t
    WHERE t.family_id = p_family_id AND p_action IN ('token.refresh', 'token.revoke', 'token.reuse_detected')
    ORDER BY t.issued_at DESC LIMIT 1
$$;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'api_auth'
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO optibid_auth', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO optibid_api', f);
    END LOOP;
END
$$;
