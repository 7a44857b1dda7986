"""Bronze assets: raw data landed append-only in Delta with lineage columns."""
