-- The uploads endpoints (serving_api/routers/uploads.py) page an upload's quarantined rows as the RLS-bound
-- API role. ops.quarantine has no org_id of its own: a row is visible exactly when its upload is, because
-- the policy's subquery on ops.uploads runs under that table's org_isolation policy for the same role.
-- The pipeline (table owner) is not subject to RLS, so ingestion/files writes as before.
GRANT SELECT ON ops.uploads, ops.quarantine TO optibid_api;
ALTER TABLE ops.quarantine ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ops.quarantine;
CREATE POLICY org_isolation ON ops.quarantine
    USING (EXISTS (SELECT 1 FROM ops.uploads u WHERE u.id = upload_id));
