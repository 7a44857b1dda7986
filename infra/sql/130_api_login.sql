-- Serving API: a login of its own, so the API need not connect as the tables' owner (often a superuser,
-- which no row-level security binds). `OPTIBID_API_DATABASE_URL` names it; unset, the API sets it up itself
-- on the warehouse's server (serving_api.app.derived_api_login_url).
--
-- * optibid_api_login owns nothing and may become optibid_api only. It INHERITs that role's rights, so a
--   connection that forgets `SET ROLE` or the organization scope is still the RLS-bound API role with no
--   organization: public rows only, no organization's rows, and no table the API role was not granted.
-- * It has no password here (secrets never live in migrations): the API sets it at start from
--   `OPTIBID_API_DATABASE_URL` (serving_api.app.provision_api_login), or an operator does, out of band.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api_login') THEN
        CREATE ROLE optibid_api_login LOGIN INHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently in another database of this cluster
END
$$;
GRANT optibid_api TO optibid_api_login;
