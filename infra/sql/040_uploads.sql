-- File uploads (API and landing folder) and the rows they could not land (issue 4, ingestion/files).
CREATE TABLE IF NOT EXISTS ops.uploads (
    id                  bigserial PRIMARY KEY,
    org_id              text NOT NULL,
    file_name           text NOT NULL,           -- sanitised: no directories, no special characters
    source              text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'landing', 'cli')),
    sha256              text NOT NULL,
    size_bytes          bigint NOT NULL,
    format              text,                    -- from the content: csv | xlsx | json | jsonl | parquet
    stored_path         text,
    status              text NOT NULL CHECK (status IN
                            ('received', 'held_for_mapping', 'landed', 'failed', 'duplicate')),
    duplicate_of        bigint REFERENCES ops.uploads (id),
    dataset             text,
    detected_schema     jsonb,
    mapping             jsonb,
    mapping_confidence  double precision,
    rows_read           bigint,
    rows_landed         bigint,
    rows_quarantined    bigint,
    profile             jsonb,
    error               text,
    batch_id            text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    landed_at           timestamptz,
    CHECK (rows_read IS NULL OR rows_read = rows_landed + rows_quarantined)
);
-- One live upload per content and organisation: a second copy becomes status 'duplicate'.
CREATE UNIQUE INDEX IF NOT EXISTS uploads_org_sha256_live
    ON ops.uploads (org_id, sha256) WHERE status NOT IN ('duplicate', 'failed');
CREATE INDEX IF NOT EXISTS uploads_status ON ops.uploads (status, created_at);

CREATE TABLE IF NOT EXISTS ops.quarantine (
    id          bigserial PRIMARY KEY,
    upload_id   bigint NOT NULL REFERENCES ops.uploads (id) ON DELETE CASCADE,
    row_number  bigint,
    sheet       text,
    raw_text    text,
    raw_json    jsonb,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quarantine_upload ON ops.quarantine (upload_id, row_number);
