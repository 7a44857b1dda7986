-- Identity: user lifecycle (invitations, password resets, deactivation), TOTP MFA, sessions with absolute and
-- idle lifetimes, per-organization identity policy, OIDC single sign-on, and the cut-over from HS256 to
-- asymmetric access tokens.
--
-- Same rules as 120_api_hardening.sql: tables an admin manages through the API are organization-scoped with
-- forced RLS; whatever must happen before the caller's organization is known (accepting an invitation,
-- resetting a password, the second login factor, the OIDC callback) goes through SECURITY DEFINER functions
-- of `api_auth` owned by `optibid_auth`. MFA secrets, recovery codes, challenges and OIDC login states are
-- readable by those functions only, never by the API role.

ALTER TABLE ops.users ADD COLUMN IF NOT EXISTS auth_source text NOT NULL DEFAULT 'password';
ALTER TABLE ops.users DROP CONSTRAINT IF EXISTS users_auth_source_check;
ALTER TABLE ops.users ADD CONSTRAINT users_auth_source_check CHECK (auth_source IN ('password', 'oidc'));
ALTER TABLE ops.users ADD COLUMN IF NOT EXISTS external_subject text;
ALTER TABLE ops.users ADD COLUMN IF NOT EXISTS email_verified_at timestamptz;
ALTER TABLE ops.users ADD COLUMN IF NOT EXISTS password_changed_at timestamptz;
ALTER TABLE ops.users ADD COLUMN IF NOT EXISTS deactivated_at timestamptz;
CREATE UNIQUE INDEX IF NOT EXISTS users_org_external_subject_idx
    ON ops.users (org_id, external_subject) WHERE external_subject IS NOT NULL;

ALTER TABLE ops.login_attempts ADD COLUMN IF NOT EXISTS factor text NOT NULL DEFAULT 'password';

-- Per-organization identity policy (absent row = the defaults below).
CREATE TABLE IF NOT EXISTS ops.identity_policies (
    org_id                      text PRIMARY KEY REFERENCES silver.ref__organizations (org_id),
    mfa_required                boolean NOT NULL DEFAULT false,
    session_absolute_seconds    integer NOT NULL DEFAULT 604800
        CHECK (session_absolute_seconds BETWEEN 300 AND 2592000),
    session_idle_seconds        integer NOT NULL DEFAULT 28800
        CHECK (session_idle_seconds BETWEEN 300 AND 2592000),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    updated_by                  text
);

-- Single-use, expiring links sent by e-mail: invitations and password resets (only a digest is stored).
CREATE TABLE IF NOT EXISTS ops.user_tokens (
    token_id        text PRIMARY KEY,
    token_hash      text NOT NULL UNIQUE,
    purpose         text NOT NULL CHECK (purpose IN ('invite', 'password_reset')),
    org_id          text NOT NULL REFERENCES silver.ref__organizations (org_id),
    user_id         text REFERENCES ops.users (user_id),
    email           text NOT NULL,
    role            text CHECK (role IN ('admin', 'analyst', 'trader', 'viewer')),
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX IF NOT EXISTS user_tokens_email_idx ON ops.user_tokens (lower(email), purpose);

-- Sessions: one per refresh-token family, with the device and address it was opened from.
CREATE TABLE IF NOT EXISTS ops.sessions (
    family_id           text PRIMARY KEY,
    user_id             text NOT NULL REFERENCES ops.users (user_id),
    org_id              text NOT NULL REFERENCES silver.ref__organizations (org_id),
    auth_method         text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz NOT NULL DEFAULT now(),
    absolute_expires_at timestamptz NOT NULL,
    idle_seconds        integer NOT NULL,
    ip                  text,
    user_agent          text,
    id_token            text,
    revoked_at          timestamptz
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON ops.sessions (user_id);

-- TOTP (RFC 6238) per user; `confirmed_at` null while enrolment awaits its first code.
CREATE TABLE IF NOT EXISTS ops.user_mfa (
    user_id         text PRIMARY KEY REFERENCES ops.users (user_id),
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    confirmed_at    timestamptz,
    last_step       bigint  -- the newest accepted time step: a code is never accepted twice
);
CREATE TABLE IF NOT EXISTS ops.mfa_recovery_codes (
    user_id     text NOT NULL REFERENCES ops.users (user_id),
    code_hash   text NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (user_id, code_hash)
);
-- The first login step's proof that the password was right, traded for tokens with a second factor.
CREATE TABLE IF NOT EXISTS ops.mfa_challenges (
    challenge_hash  text PRIMARY KEY,
    user_id         text NOT NULL REFERENCES ops.users (user_id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    used_at         timestamptz
);

-- OIDC relying-party settings per organization; the client secret is encrypted by the API.
CREATE TABLE IF NOT EXISTS ops.oidc_providers (
    org_id              text PRIMARY KEY REFERENCES silver.ref__organizations (org_id),
    issuer              text NOT NULL,
    client_id           text NOT NULL,
    client_secret_enc   text,
    scopes              text NOT NULL DEFAULT 'openid email profile',
    groups_claim        text NOT NULL DEFAULT 'groups',
    group_roles         jsonb NOT NULL DEFAULT '{}'::jsonb,
    default_role        text CHECK (default_role IN ('admin', 'analyst', 'trader', 'viewer')),
    jit_provisioning    boolean NOT NULL DEFAULT true,
    enabled             boolean NOT NULL DEFAULT true,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text
);
-- One row per started OIDC login: `state` is single-use and carries the nonce and the PKCE verifier.
CREATE TABLE IF NOT EXISTS ops.oidc_states (
    state_hash      text PRIMARY KEY,
    org_id          text NOT NULL REFERENCES silver.ref__organizations (org_id),
    nonce           text NOT NULL,
    code_verifier   text NOT NULL,
    redirect_uri    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
-- Nonces of accepted ID tokens, until they expire: an ID token is accepted once.
CREATE TABLE IF NOT EXISTS ops.oidc_used_nonces (
    nonce       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);

-- When this database first saw asymmetric access tokens: HS256 tokens issued before it are accepted until
-- the rotation window after it ends, never afterwards (serving_api.token_keys).
CREATE TABLE IF NOT EXISTS ops.token_signing (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    asymmetric_since    timestamptz NOT NULL DEFAULT now()
);

-- --- tenancy ------------------------------------------------------------------------------------------
ALTER TABLE ops.identity_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.user_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.oidc_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.user_mfa ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.mfa_recovery_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.mfa_challenges ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.oidc_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.oidc_used_nonces ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ops.identity_policies;
CREATE POLICY org_isolation ON ops.identity_policies USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON ops.user_tokens;
CREATE POLICY org_isolation ON ops.user_tokens USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON ops.sessions;
CREATE POLICY org_isolation ON ops.sessions USING (org_id = current_setting('optibid.org_id', true));
DROP POLICY IF EXISTS org_isolation ON ops.oidc_providers;
CREATE POLICY org_isolation ON ops.oidc_providers USING (org_id = current_setting('optibid.org_id', true));

GRANT SELECT, INSERT, UPDATE ON ops.identity_policies TO optibid_api;
GRANT SELECT, INSERT, UPDATE (revoked_at) ON ops.user_tokens TO optibid_api;
GRANT SELECT ON ops.sessions TO optibid_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON ops.oidc_providers TO optibid_api;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'ops' AND c.relname IN (
            'identity_policies', 'user_tokens', 'sessions', 'oidc_providers', 'user_mfa', 'mfa_recovery_codes',
            'mfa_challenges', 'oidc_states', 'oidc_used_nonces')
    LOOP
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('DROP POLICY IF EXISTS owner_unscoped ON %s', t.rel);
        EXECUTE format(
            'CREATE POLICY owner_unscoped ON %s TO %I'
            ' USING (coalesce(current_setting(''optibid.org_id'', true), '''') = '''')'
            ' WITH CHECK (coalesce(current_setting(''optibid.org_id'', true), '''') = '''')',
            t.rel, t.owner
        );
        EXECUTE format('DROP POLICY IF EXISTS auth_lookup ON %s', t.rel);
        EXECUTE format('CREATE POLICY auth_lookup ON %s TO optibid_auth USING (true) WITH CHECK (true)', t.rel);
    END LOOP;
END
$$;

-- --- optibid_auth: the rows the pre-authentication and credential-changing functions touch ------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ops.user_mfa, ops.mfa_recovery_codes, ops.mfa_challenges, ops.oidc_states,
    ops.oidc_used_nonces TO optibid_auth;
GRANT SELECT, INSERT, UPDATE (used_at, revoked_at) ON ops.user_tokens TO optibid_auth;
GRANT SELECT, INSERT, UPDATE (last_used_at, ip, revoked_at) ON ops.sessions TO optibid_auth;
GRANT SELECT ON ops.identity_policies, ops.oidc_providers TO optibid_auth;
GRANT SELECT, INSERT ON ops.token_signing TO optibid_auth;
GRANT UPDATE (revoked_at) ON ops.api_keys TO optibid_auth;
GRANT INSERT, UPDATE (password_hash, password_changed_at, email_verified_at, role, is_active, deactivated_at,
    external_subject) ON ops.users TO optibid_auth;
DROP POLICY IF EXISTS auth_write ON ops.users;
CREATE POLICY auth_write ON ops.users FOR INSERT TO optibid_auth WITH CHECK (true);
DROP POLICY IF EXISTS auth_update ON ops.users;
CREATE POLICY auth_update ON ops.users FOR UPDATE TO optibid_auth USING (true) WITH CHECK (true);

-- --- functions ----------------------------------------------------------------------------------------

-- Everything the first login step needs about an e-mail: the account, its MFA state and its org's policy.
CREATE OR REPLACE FUNCTION api_auth.login_profile(p_email text)
RETURNS TABLE (user_id text, org_id text, role text, password_hash text, is_active boolean, auth_source text,
               mfa_enabled boolean, mfa_required boolean, session_absolute_seconds integer,
               session_idle_seconds integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.user_id, u.org_id, u.role, u.password_hash, u.is_active, u.auth_source,
           EXISTS (SELECT 1 FROM ops.user_mfa m WHERE m.user_id = u.user_id AND m.confirmed_at IS NOT NULL),
           coalesce(p.mfa_required, false), coalesce(p.session_absolute_seconds, 604800),
           coalesce(p.session_idle_seconds, 28800)
    FROM ops.users u LEFT JOIN ops.identity_policies p ON p.org_id = u.org_id
    WHERE lower(u.email) = p_email
$$;

-- The same by user id (second factor, refresh, OIDC).
CREATE OR REPLACE FUNCTION api_auth.user_profile(p_user_id text)
RETURNS TABLE (user_id text, org_id text, email text, role text, is_active boolean, auth_source text,
               mfa_enabled boolean, mfa_required boolean, session_absolute_seconds integer,
               session_idle_seconds integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.user_id, u.org_id, u.email, u.role, u.is_active, u.auth_source,
           EXISTS (SELECT 1 FROM ops.user_mfa m WHERE m.user_id = u.user_id AND m.confirmed_at IS NOT NULL),
           coalesce(p.mfa_required, false), coalesce(p.session_absolute_seconds, 604800),
           coalesce(p.session_idle_seconds, 28800)
    FROM ops.users u LEFT JOIN ops.identity_policies p ON p.org_id = u.org_id
    WHERE u.user_id = p_user_id
$$;

CREATE OR REPLACE FUNCTION api_auth.password_hash_of(p_user_id text)
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.password_hash FROM ops.users u WHERE u.user_id = p_user_id AND u.is_active
$$;

-- An attempt at a second factor (counted with password failures by api_auth.login_failures).
CREATE OR REPLACE FUNCTION api_auth.record_factor(p_email text, p_ip text, p_factor text, p_success boolean)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.login_attempts (email, client_ip, success, factor) VALUES (p_email, p_ip, p_success, p_factor);
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    SELECT (SELECT u.org_id FROM ops.users u WHERE lower(u.email) = p_email LIMIT 1), p_email,
           CASE WHEN p_success THEN 'mfa.success' ELSE 'mfa.failure' END, p_email,
           jsonb_build_object('ip', p_ip, 'factor', p_factor);
$$;

-- The login throttle counts failures of the login factors only; checks made by a signed-in caller (password
-- change, MFA management) are rate-limited per user instead, so they cannot lock the owner's logins.
CREATE OR REPLACE FUNCTION api_auth.login_failures(p_email text, p_ip text, p_window interval)
RETURNS TABLE (by_email bigint, by_ip bigint, by_pair bigint, last_pair timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FILTER (WHERE lower(a.email) = p_email),
           count(*) FILTER (WHERE a.client_ip = p_ip),
           count(*) FILTER (WHERE lower(a.email) = p_email AND a.client_ip = p_ip),
           max(a.at) FILTER (WHERE lower(a.email) = p_email AND a.client_ip = p_ip)
    FROM ops.login_attempts a
    WHERE NOT a.success AND a.at > now() - p_window AND (lower(a.email) = p_email OR a.client_ip = p_ip)
      AND a.factor IN ('password', 'totp', 'recovery_code')
$$;

-- An audit row written before (or without) an organization-scoped transaction.
CREATE OR REPLACE FUNCTION api_auth.audit(p_org_id text, p_actor text, p_action text, p_target text, p_details jsonb)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    VALUES (p_org_id, p_actor, p_action, p_target, coalesce(p_details, '{}'::jsonb))
$$;

-- --- sessions ---
CREATE OR REPLACE FUNCTION api_auth.start_session(
    p_family_id text, p_user_id text, p_auth_method text, p_absolute_seconds integer, p_idle_seconds integer,
    p_ip text, p_user_agent text, p_id_token text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.sessions (family_id, user_id, org_id, auth_method, absolute_expires_at, idle_seconds, ip,
                              user_agent, id_token)
    SELECT p_family_id, u.user_id, u.org_id, p_auth_method, now() + make_interval(secs => p_absolute_seconds),
           p_idle_seconds, p_ip, left(p_user_agent, 256), p_id_token
    FROM ops.users u WHERE u.user_id = p_user_id AND u.is_active
$$;

-- 'ok' (and the use recorded), 'expired' (absolute lifetime), 'idle', 'revoked', or 'unknown' (a family
-- opened before sessions were recorded).
CREATE OR REPLACE FUNCTION api_auth.touch_session(p_family_id text, p_ip text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s ops.sessions%ROWTYPE;
BEGIN
    SELECT * INTO s FROM ops.sessions WHERE family_id = p_family_id;
    IF NOT FOUND THEN
        RETURN 'unknown';
    ELSIF s.revoked_at IS NOT NULL THEN
        RETURN 'revoked';
    ELSIF s.absolute_expires_at <= now() THEN
        RETURN 'expired';
    ELSIF s.last_used_at + make_interval(secs => s.idle_seconds) <= now() THEN
        RETURN 'idle';
    END IF;
    UPDATE ops.sessions SET last_used_at = now(), ip = coalesce(p_ip, ip) WHERE family_id = p_family_id;
    RETURN 'ok';
END
$$;

CREATE OR REPLACE FUNCTION api_auth.session_expires_at(p_family_id text)
RETURNS timestamptz LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.absolute_expires_at FROM ops.sessions s WHERE s.family_id = p_family_id
$$;

CREATE OR REPLACE FUNCTION api_auth.session_id_token(p_family_id text)
RETURNS TABLE (org_id text, id_token text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.org_id, s.id_token FROM ops.sessions s WHERE s.family_id = p_family_id
$$;

-- Revoking a family also ends its session.
CREATE OR REPLACE FUNCTION api_auth.revoke_family(p_family_id text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.refresh_tokens SET revoked_at = now() WHERE family_id = p_family_id AND revoked_at IS NULL;
    UPDATE ops.sessions SET revoked_at = now() WHERE family_id = p_family_id AND revoked_at IS NULL;
$$;

-- Every open refresh family and every API key a user created ('family', id) / ('api_key', prefix), revoked
-- (deactivation, role and password changes); `p_keep_family` survives (the caller's own new session).
CREATE OR REPLACE FUNCTION api_auth.revoke_user_credentials(p_user_id text, p_keep_family text)
RETURNS TABLE (kind text, id text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH families AS (
        UPDATE ops.refresh_tokens SET revoked_at = now()
        WHERE user_id = p_user_id AND revoked_at IS NULL AND family_id IS DISTINCT FROM p_keep_family
        RETURNING family_id
    ), sessions AS (
        UPDATE ops.sessions SET revoked_at = now()
        WHERE user_id = p_user_id AND revoked_at IS NULL AND family_id IS DISTINCT FROM p_keep_family
        RETURNING family_id
    ), keys AS (
        UPDATE ops.api_keys SET revoked_at = now()
        WHERE created_by = 'user:' || p_user_id AND revoked_at IS NULL
        RETURNING prefix
    )
    SELECT DISTINCT 'family', family_id FROM (SELECT family_id FROM families UNION SELECT family_id FROM sessions) f
    UNION ALL SELECT 'api_key', prefix FROM keys
$$;

-- Revoked families an access token could still be alive for (sessions ended by timeouts included).
CREATE OR REPLACE FUNCTION api_auth.family_revoked(p_family_id text)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM ops.refresh_tokens t WHERE t.family_id = p_family_id AND t.revoked_at IS NOT NULL)
        OR EXISTS (SELECT 1 FROM ops.sessions s WHERE s.family_id = p_family_id AND s.revoked_at IS NOT NULL)
$$;

-- Audit row of a session event (now also login and logout of SSO sessions).
CREATE OR REPLACE FUNCTION api_auth.audit_session(p_family_id text, p_action text, p_details jsonb)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    SELECT t.org_id, 'user:' || t.user_id, p_action, p_family_id, p_details
    FROM ops.refresh_tokens t
    WHERE t.family_id = p_family_id
      AND p_action IN ('token.refresh', 'token.revoke', 'token.reuse_detected', 'session.expired', 'session.idle',
                       'session.revoke')
    ORDER BY t.issued_at DESC LIMIT 1
$$;

-- --- e-mailed single-use tokens ---
-- The invitation or reset behind a link, if it is still usable (not used, revoked or expired).
CREATE OR REPLACE FUNCTION api_auth.user_token(p_token_hash text, p_purpose text)
RETURNS TABLE (token_id text, org_id text, user_id text, email text, role text, expires_at timestamptz,
               used_at timestamptz, revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.token_id, t.org_id, t.user_id, t.email, t.role, t.expires_at, t.used_at, t.revoked_at
    FROM ops.user_tokens t WHERE t.token_hash = p_token_hash AND t.purpose = p_purpose
$$;

-- Use an invitation: exactly once, before it expires; creates the user. NULL when the link is not usable,
-- 'exists' when the e-mail already has an account.
CREATE OR REPLACE FUNCTION api_auth.accept_invitation(p_token_hash text, p_user_id text, p_password_hash text)
RETURNS TABLE (user_id text, org_id text, email text, role text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t ops.user_tokens%ROWTYPE;
BEGIN
    UPDATE ops.user_tokens SET used_at = now()
    WHERE token_hash = p_token_hash AND purpose = 'invite' AND used_at IS NULL AND revoked_at IS NULL
      AND expires_at > now()
    RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO ops.users (user_id, org_id, email, role, password_hash, email_verified_at, password_changed_at)
    VALUES (p_user_id, t.org_id, lower(t.email), t.role, p_password_hash, now(), now());
    INSERT INTO ops.audit_log (org_id, actor, action, target, details)
    VALUES (t.org_id, 'user:' || p_user_id, 'invitation.accept', p_user_id,
            jsonb_build_object('email', lower(t.email), 'role', t.role, 'invitation', t.token_id));
    RETURN QUERY SELECT p_user_id, t.org_id, lower(t.email), t.role;
END
$$;

-- Issue a password-reset token for an active password account (NULL for anything else).
CREATE OR REPLACE FUNCTION api_auth.create_password_reset(
    p_email text, p_token_id text, p_token_hash text, p_expires_at timestamptz)
RETURNS TABLE (user_id text, org_id text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.user_tokens (token_id, token_hash, purpose, org_id, user_id, email, created_by, expires_at)
    SELECT p_token_id, p_token_hash, 'password_reset', u.org_id, u.user_id, u.email, 'self', p_expires_at
    FROM ops.users u WHERE lower(u.email) = p_email AND u.is_active AND u.auth_source = 'password'
    RETURNING user_id, org_id
$$;

-- Use a reset token (once, before it expires): the new password, and every other reset link of the user dies.
CREATE OR REPLACE FUNCTION api_auth.reset_password(p_token_hash text, p_password_hash text)
RETURNS TABLE (user_id text, org_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t ops.user_tokens%ROWTYPE;
BEGIN
    UPDATE ops.user_tokens SET used_at = now()
    WHERE token_hash = p_token_hash AND purpose = 'password_reset' AND used_at IS NULL AND revoked_at IS NULL
      AND expires_at > now()
    RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE ops.user_tokens SET revoked_at = now()
    WHERE ops.user_tokens.user_id = t.user_id AND purpose = 'password_reset' AND used_at IS NULL
      AND revoked_at IS NULL;
    UPDATE ops.users SET password_hash = p_password_hash, password_changed_at = now()
    WHERE ops.users.user_id = t.user_id AND is_active;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT t.user_id, t.org_id;
END
$$;

CREATE OR REPLACE FUNCTION api_auth.set_password(p_user_id text, p_password_hash text)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.users SET password_hash = p_password_hash, password_changed_at = now()
    WHERE user_id = p_user_id AND is_active AND auth_source = 'password'
    RETURNING true
$$;

-- --- TOTP ---
CREATE OR REPLACE FUNCTION api_auth.mfa_begin_enrolment(p_user_id text, p_secret text)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.user_mfa (user_id, secret) VALUES (p_user_id, p_secret)
    ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = now(), last_step = NULL
        WHERE ops.user_mfa.confirmed_at IS NULL
    RETURNING true
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_secret(p_user_id text)
RETURNS TABLE (secret text, confirmed boolean, last_step bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.secret, m.confirmed_at IS NOT NULL, m.last_step FROM ops.user_mfa m WHERE m.user_id = p_user_id
    FOR UPDATE
$$;

-- Record an accepted time step; false when that step (or a later one) was already used (a replayed code).
CREATE OR REPLACE FUNCTION api_auth.mfa_accept_step(p_user_id text, p_step bigint, p_confirm boolean)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.user_mfa SET last_step = p_step,
           confirmed_at = CASE WHEN p_confirm THEN coalesce(confirmed_at, now()) ELSE confirmed_at END
    WHERE user_id = p_user_id AND (last_step IS NULL OR last_step < p_step)
    RETURNING true
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_replace_recovery_codes(p_user_id text, p_code_hashes text[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ops.mfa_recovery_codes WHERE user_id = p_user_id;
    INSERT INTO ops.mfa_recovery_codes (user_id, code_hash) SELECT p_user_id, unnest(p_code_hashes);
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_use_recovery_code(p_user_id text, p_code_hash text)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.mfa_recovery_codes SET used_at = now()
    WHERE user_id = p_user_id AND code_hash = p_code_hash AND used_at IS NULL
    RETURNING true
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_recovery_codes_left(p_user_id text)
RETURNS integer LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)::integer FROM ops.mfa_recovery_codes WHERE user_id = p_user_id AND used_at IS NULL
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_disable(p_user_id text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ops.mfa_recovery_codes WHERE user_id = p_user_id;
    DELETE FROM ops.user_mfa WHERE user_id = p_user_id;
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_new_challenge(p_challenge_hash text, p_user_id text, p_seconds integer)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ops.mfa_challenges WHERE expires_at < now() - interval '1 day';
    INSERT INTO ops.mfa_challenges (challenge_hash, user_id, expires_at)
    VALUES (p_challenge_hash, p_user_id, now() + make_interval(secs => p_seconds));
$$;

-- The user of a live challenge, counting this attempt against it; NULL when it is unknown, used, expired or
-- out of attempts (`p_max_attempts`).
CREATE OR REPLACE FUNCTION api_auth.mfa_challenge_attempt(p_challenge_hash text, p_max_attempts integer)
RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.mfa_challenges SET attempts = attempts + 1
    WHERE challenge_hash = p_challenge_hash AND used_at IS NULL AND expires_at > now()
      AND attempts < p_max_attempts
    RETURNING user_id
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_challenge_peek(p_challenge_hash text)
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT user_id FROM ops.mfa_challenges
    WHERE challenge_hash = p_challenge_hash AND used_at IS NULL AND expires_at > now()
$$;

CREATE OR REPLACE FUNCTION api_auth.mfa_challenge_done(p_challenge_hash text)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.mfa_challenges SET used_at = now() WHERE challenge_hash = p_challenge_hash AND used_at IS NULL
    RETURNING true
$$;

-- --- OIDC ---
CREATE OR REPLACE FUNCTION api_auth.oidc_provider(p_org_id text)
RETURNS TABLE (org_id text, issuer text, client_id text, client_secret_enc text, scopes text, groups_claim text,
               group_roles jsonb, default_role text, jit_provisioning boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.org_id, p.issuer, p.client_id, p.client_secret_enc, p.scopes, p.groups_claim, p.group_roles,
           p.default_role, p.jit_provisioning
    FROM ops.oidc_providers p WHERE p.org_id = p_org_id AND p.enabled
$$;

CREATE OR REPLACE FUNCTION api_auth.oidc_save_state(
    p_state_hash text, p_org_id text, p_nonce text, p_code_verifier text, p_redirect_uri text, p_seconds integer)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ops.oidc_states WHERE expires_at < now() - interval '1 day';
    DELETE FROM ops.oidc_used_nonces WHERE expires_at < now();
    INSERT INTO ops.oidc_states (state_hash, org_id, nonce, code_verifier, redirect_uri, expires_at)
    VALUES (p_state_hash, p_org_id, p_nonce, p_code_verifier, p_redirect_uri,
            now() + make_interval(secs => p_seconds));
$$;

-- Use a login state, once, before it expires.
CREATE OR REPLACE FUNCTION api_auth.oidc_take_state(p_state_hash text)
RETURNS TABLE (org_id text, nonce text, code_verifier text, redirect_uri text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.oidc_states SET used_at = now()
    WHERE state_hash = p_state_hash AND used_at IS NULL AND expires_at > now()
    RETURNING org_id, nonce, code_verifier, redirect_uri
$$;

-- Record an ID token's nonce; false when it was seen before (a replayed ID token).
CREATE OR REPLACE FUNCTION api_auth.oidc_use_nonce(p_nonce text, p_expires_at timestamptz)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.oidc_used_nonces (nonce, expires_at) VALUES (p_nonce, p_expires_at)
    ON CONFLICT (nonce) DO NOTHING
    RETURNING true
$$;

-- The account of an SSO login: found by subject, else by e-mail in the organization, else created when the
-- provider provisions just in time; its role follows the provider's groups. Returns the user and whether its
-- role changed (its other sessions are then revoked by the caller). Status: 'ok', 'inactive',
-- 'not_provisioned', 'other_org' (the e-mail belongs to another organization's account).
CREATE OR REPLACE FUNCTION api_auth.oidc_account(
    p_org_id text, p_subject text, p_email text, p_role text, p_jit boolean, p_new_user_id text)
RETURNS TABLE (status text, user_id text, role text, role_changed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    u ops.users%ROWTYPE;
BEGIN
    SELECT * INTO u FROM ops.users x WHERE x.org_id = p_org_id AND x.external_subject = p_subject;
    IF NOT FOUND THEN
        SELECT * INTO u FROM ops.users x WHERE lower(x.email) = p_email;
        IF FOUND AND u.org_id <> p_org_id THEN
            RETURN QUERY SELECT 'other_org', NULL::text, NULL::text, false;
            RETURN;
        END IF;
    END IF;
    IF NOT FOUND THEN
        IF NOT p_jit THEN
            RETURN QUERY SELECT 'not_provisioned', NULL::text, NULL::text, false;
            RETURN;
        END IF;
        INSERT INTO ops.users (user_id, org_id, email, role, password_hash, auth_source, external_subject,
                               email_verified_at)
        VALUES (p_new_user_id, p_org_id, p_email, p_role, NULL, 'oidc', p_subject, now());
        INSERT INTO ops.audit_log (org_id, actor, action, target, details)
        VALUES (p_org_id, 'oidc:' || p_subject, 'user.provision', p_new_user_id,
                jsonb_build_object('email', p_email, 'role', p_role));
        RETURN QUERY SELECT 'ok', p_new_user_id, p_role, false;
        RETURN;
    END IF;
    IF NOT u.is_active THEN
        RETURN QUERY SELECT 'inactive', u.user_id, u.role, false;
        RETURN;
    END IF;
    UPDATE ops.users x SET external_subject = p_subject, role = p_role WHERE x.user_id = u.user_id;
    IF u.role <> p_role THEN
        INSERT INTO ops.audit_log (org_id, actor, action, target, details)
        VALUES (p_org_id, 'oidc:' || p_subject, 'user.role_change', u.user_id,
                jsonb_build_object('from', u.role, 'to', p_role, 'source', 'oidc_groups'));
    END IF;
    RETURN QUERY SELECT 'ok', u.user_id, p_role, u.role <> p_role;
END
$$;

-- --- token signing cut-over ---
CREATE OR REPLACE FUNCTION api_auth.asymmetric_since()
RETURNS timestamptz LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    since timestamptz;
BEGIN
    INSERT INTO ops.token_signing (singleton) VALUES (true) ON CONFLICT DO NOTHING;
    SELECT asymmetric_since INTO since FROM ops.token_signing;
    RETURN since;
END
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
