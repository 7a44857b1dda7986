-- The optimize endpoints (serving_api/routers/optimize.py) store the caller's runs as the RLS-bound API role.
-- Only inserts, and only rows of the caller's own organization: the permissive org_isolation policy
-- (070_optimization.sql) would also admit org_id NULL, so a restrictive policy narrows API inserts.
GRANT INSERT ON ml.optimization_runs TO optibid_api;
DROP POLICY IF EXISTS api_insert_own_org ON ml.optimization_runs;
CREATE POLICY api_insert_own_org ON ml.optimization_runs AS RESTRICTIVE FOR INSERT TO optibid_api
    WITH CHECK (org_id = current_setting('optibid.org_id', true));
