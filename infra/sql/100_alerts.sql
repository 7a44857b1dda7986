-- Alerts raised by the pipeline (failed runs, failed blocking checks, missed freshness, drift, anomalies),
-- written by infra/alerts.py from the Dagster alert sensors and served by GET /api/v1/alerts.
--
-- One OPEN row per condition: dedup_key is unique among unresolved rows, so a condition that persists bumps
-- last_seen/occurrences of its row instead of adding rows (and is not delivered again). Once resolved, the
-- same condition recurring opens a new row.
--
-- Tenancy: org_id NULL is a platform alert (shared market data, pipeline runs, checks over every org's rows),
-- visible to every organization, so its detail holds summaries only (counts, expectation names), never
-- row samples. An alert about one organization's data carries its org_id and only that org sees it.
-- org_id has no foreign key: an alert must be recordable even when its org tag names no known organization.
CREATE TABLE IF NOT EXISTS ops.alerts (
    alert_id            bigserial PRIMARY KEY,
    org_id              text,
    kind                text NOT NULL
                        CHECK (kind IN ('run_failure', 'check_failure', 'freshness', 'drift', 'anomaly')),
    severity            text NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    dedup_key           text NOT NULL,
    title               text NOT NULL,
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb,
    asset_key           text,
    partition           text,
    first_seen          timestamptz NOT NULL DEFAULT now(),
    last_seen           timestamptz NOT NULL DEFAULT now(),
    occurrences         integer NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    resolved_at         timestamptz,
    resolution          jsonb,
    -- Delivery: the channels (infra.alerts channel ids, never URLs) that received the open notice and the
    -- resolution notice; delivery_pending says a notice still has channels to reach; failed attempts of the
    -- current notice are bounded by OPTIBID_ALERT_DELIVERY_MAX_ATTEMPTS.
    notified_channels   text[] NOT NULL DEFAULT '{}',
    resolution_notified_channels text[] NOT NULL DEFAULT '{}',
    delivery_pending    boolean NOT NULL DEFAULT true,
    delivery_attempts   integer NOT NULL DEFAULT 0,
    last_delivery_at    timestamptz,
    last_delivery_error text
);

CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_dedup_key ON ops.alerts (dedup_key) WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_org_last_seen_idx ON ops.alerts (org_id, last_seen DESC, alert_id DESC);
CREATE INDEX IF NOT EXISTS alerts_delivery_pending_idx ON ops.alerts (alert_id) WHERE delivery_pending;

ALTER TABLE ops.alerts ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON ops.alerts;
CREATE POLICY org_isolation ON ops.alerts
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
GRANT SELECT ON ops.alerts TO optibid_api;
