-- Days of warehouse tables moved to the cold tier by the retention job (infra/retention.py): where the archive
-- is, how many rows it holds and their checksum (md5 of the rows' text in table order, as Postgres prints
-- them), checked against the archive before the hot rows were deleted. A day restored to hot storage
-- (`optibid archive restore`) gets restored_at; archiving it again replaces the row.
CREATE TABLE IF NOT EXISTS ops.archived_partitions (
    table_name   text NOT NULL,
    day          date NOT NULL,
    row_count    bigint NOT NULL CHECK (row_count >= 0),
    checksum     text NOT NULL,
    archive_uri  text NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    restored_at  timestamptz,
    PRIMARY KEY (table_name, day)
);

-- The API reads which audit days are archived, to serve them from the cold tier (GET /audit); the rows it
-- reads there are filtered to the caller's organization by the API, as the table's row-level security would.
GRANT SELECT ON ops.archived_partitions TO optibid_api;
