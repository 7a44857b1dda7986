-- SAML 2.0 single sign-on (serving_api/routers/saml.py): per-organization identity-provider settings, the
-- outstanding AuthnRequests (their single-use RelayState), the assertion ids already accepted (replay), the
-- SAML session of an OptiBid session (for single logout), and the account lookup shared by OIDC and SAML.
--
-- Same rules as 140_identity.sql: the provider settings are organization-scoped with forced RLS and managed by
-- admins through the API; login requests, used assertion ids and SAML sessions are reached only through the
-- SECURITY DEFINER functions of `api_auth` owned by `optibid_auth`, never by the API role.

ALTER TABLE ops.users DROP CONSTRAINT IF EXISTS users_auth_source_check;
ALTER TABLE ops.users ADD CONSTRAINT users_auth_source_check CHECK (auth_source IN ('password', 'oidc', 'saml'));

-- Service-provider settings per organization: the IdP's entity id, SSO (and optional SLO) URL and signing
-- certificate (PEM), the attributes carrying e-mail and groups, and the group -> role mapping.
CREATE TABLE IF NOT EXISTS ops.saml_providers (
    org_id              text PRIMARY KEY REFERENCES silver.ref__organizations (org_id),
    idp_entity_id       text NOT NULL,
    idp_sso_url         text NOT NULL,
    idp_slo_url         text,
    idp_certificate     text NOT NULL,
    email_attribute     text,  -- NULL: the NameID is the e-mail address
    groups_attribute    text NOT NULL DEFAULT 'groups',
    group_roles         jsonb NOT NULL DEFAULT '{}'::jsonb,
    default_role        text CHECK (default_role IN ('admin', 'analyst', 'trader', 'viewer')),
    jit_provisioning    boolean NOT NULL DEFAULT true,
    enabled             boolean NOT NULL DEFAULT true,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text
);
-- One row per AuthnRequest sent: the RelayState (only its digest) is single-use and names the request id the
-- Response's InResponseTo must carry.
CREATE TABLE IF NOT EXISTS ops.saml_requests (
    relay_state_hash    text PRIMARY KEY,
    request_id          text NOT NULL UNIQUE,
    org_id              text NOT NULL REFERENCES silver.ref__organizations (org_id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    used_at             timestamptz
);
-- Ids of accepted assertions until they expire: an assertion is accepted once.
CREATE TABLE IF NOT EXISTS ops.saml_used_assertions (
    org_id          text NOT NULL,
    assertion_id    text NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (org_id, assertion_id)
);
-- The IdP session behind an OptiBid session (NameID and SessionIndex), for SP-initiated single logout.
CREATE TABLE IF NOT EXISTS ops.saml_sessions (
    family_id           text PRIMARY KEY REFERENCES ops.sessions (family_id),
    org_id              text NOT NULL,
    name_id             text NOT NULL,
    name_id_format      text,
    name_id_qualifier   text,
    sp_name_qualifier   text,
    session_index       text
);

ALTER TABLE ops.saml_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.saml_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.saml_used_assertions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.saml_sessions ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ops.saml_providers;
CREATE POLICY org_isolation ON ops.saml_providers USING (org_id = current_setting('optibid.org_id', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON ops.saml_providers TO optibid_api;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'ops' AND c.relname IN ('saml_providers', 'saml_requests', 'saml_used_assertions',
                                                  'saml_sessions')
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

GRANT SELECT, INSERT, UPDATE, DELETE ON ops.saml_requests, ops.saml_used_assertions, ops.saml_sessions
    TO optibid_auth;
GRANT SELECT ON ops.saml_providers TO optibid_auth;
GRANT UPDATE (auth_source) ON ops.users TO optibid_auth;

-- --- functions ----------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION api_auth.saml_provider(p_org_id text)
RETURNS TABLE (org_id text, idp_entity_id text, idp_sso_url text, idp_slo_url text, idp_certificate text,
               email_attribute text, groups_attribute text, group_roles jsonb, default_role text,
               jit_provisioning boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.org_id, p.idp_entity_id, p.idp_sso_url, p.idp_slo_url, p.idp_certificate, p.email_attribute,
           p.groups_attribute, p.group_roles, p.default_role, p.jit_provisioning
    FROM ops.saml_providers p WHERE p.org_id = p_org_id AND p.enabled
$$;

CREATE OR REPLACE FUNCTION api_auth.saml_save_request(
    p_relay_state_hash text, p_request_id text, p_org_id text, p_seconds integer)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM ops.saml_requests WHERE expires_at < now() - interval '1 day';
    DELETE FROM ops.saml_used_assertions WHERE expires_at < now();
    INSERT INTO ops.saml_requests (relay_state_hash, request_id, org_id, expires_at)
    VALUES (p_relay_state_hash, p_request_id, p_org_id, now() + make_interval(secs => p_seconds));
$$;

-- Use a RelayState, once, before it expires: the organization and the id of the request it was sent with.
CREATE OR REPLACE FUNCTION api_auth.saml_take_request(p_relay_state_hash text)
RETURNS TABLE (org_id text, request_id text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.saml_requests SET used_at = now()
    WHERE relay_state_hash = p_relay_state_hash AND used_at IS NULL AND expires_at > now()
    RETURNING org_id, request_id
$$;

-- Record an accepted assertion id; false when it was accepted before (a replayed assertion).
CREATE OR REPLACE FUNCTION api_auth.saml_use_assertion(p_org_id text, p_assertion_id text, p_expires_at timestamptz)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.saml_used_assertions (org_id, assertion_id, expires_at)
    VALUES (p_org_id, p_assertion_id, p_expires_at)
    ON CONFLICT (org_id, assertion_id) DO NOTHING
    RETURNING true
$$;

CREATE OR REPLACE FUNCTION api_auth.saml_record_session(
    p_family_id text, p_name_id text, p_name_id_format text, p_name_id_qualifier text, p_sp_name_qualifier text,
    p_session_index text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO ops.saml_sessions (family_id, org_id, name_id, name_id_format, name_id_qualifier,
                                   sp_name_qualifier, session_index)
    SELECT s.family_id, s.org_id, p_name_id, p_name_id_format, p_name_id_qualifier, p_sp_name_qualifier,
           p_session_index
    FROM ops.sessions s WHERE s.family_id = p_family_id
$$;

-- How a session was opened and what single logout needs: the OIDC ID token or the SAML NameID and session.
CREATE OR REPLACE FUNCTION api_auth.session_sso(p_family_id text)
RETURNS TABLE (org_id text, auth_method text, id_token text, name_id text, name_id_format text,
               name_id_qualifier text, sp_name_qualifier text, session_index text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.org_id, s.auth_method, s.id_token, m.name_id, m.name_id_format, m.name_id_qualifier,
           m.sp_name_qualifier, m.session_index
    FROM ops.sessions s LEFT JOIN ops.saml_sessions m ON m.family_id = s.family_id
    WHERE s.family_id = p_family_id
$$;

-- The account of an SSO login (OIDC or SAML): found by the provider's subject, else by e-mail in the
-- organization, else created when the provider provisions just in time; its role follows the provider's
-- groups. SAML subjects (NameIDs) are stored as 'saml:' || NameID so that, in an organization with both
-- providers, a NameID can never match an OIDC `sub` (OIDC subjects keep their bare form). Returns the user
-- and whether its role changed (the caller then revokes its other sessions). Status: 'ok', 'inactive',
-- 'not_provisioned', 'other_org' (the e-mail belongs to another organization's account).
CREATE OR REPLACE FUNCTION api_auth.sso_account(
    p_org_id text, p_source text, p_subject text, p_email text, p_role text, p_jit boolean, p_new_user_id text)
RETURNS TABLE (status text, user_id text, role text, role_changed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    u ops.users%ROWTYPE;
    v_subject text;
BEGIN
    IF p_source NOT IN ('oidc', 'saml') THEN
        RAISE EXCEPTION 'unknown SSO source %', p_source;
    END IF;
    v_subject := CASE WHEN p_source = 'oidc' THEN p_subject ELSE p_source || ':' || p_subject END;
    SELECT * INTO u FROM ops.users x WHERE x.org_id = p_org_id AND x.external_subject = v_subject;
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
        VALUES (p_new_user_id, p_org_id, p_email, p_role, NULL, p_source, v_subject, now());
        INSERT INTO ops.audit_log (org_id, actor, action, target, details)
        VALUES (p_org_id, p_source || ':' || p_subject, 'user.provision', p_new_user_id,
                jsonb_build_object('email', p_email, 'role', p_role, 'source', p_source));
        RETURN QUERY SELECT 'ok', p_new_user_id, p_role, false;
        RETURN;
    END IF;
    IF NOT u.is_active THEN
        RETURN QUERY SELECT 'inactive', u.user_id, u.role, false;
        RETURN;
    END IF;
    UPDATE ops.users x SET external_subject = v_subject, role = p_role WHERE x.user_id = u.user_id;
    IF u.role <> p_role THEN
        INSERT INTO ops.audit_log (org_id, actor, action, target, details)
        VALUES (p_org_id, p_source || ':' || p_subject, 'user.role_change', u.user_id,
                jsonb_build_object('from', u.role, 'to', p_role, 'source', p_source || '_groups'));
    END IF;
    RETURN QUERY SELECT 'ok', u.user_id, p_role, u.role <> p_role;
END
$$;

-- Superseded by sso_account and session_sso above (140_identity.sql); nothing calls them any more.
DROP FUNCTION IF EXISTS api_auth.oidc_account(text, text, text, text, text, text);
DROP FUNCTION IF EXISTS api_auth.session_id_token(text);

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
