"""File-upload ingestion: CSV/TSV, Excel, JSON/JSON Lines and Parquet files into bronze Delta tables.

Both doors — `POST /uploads` (serving_api) and the landing folder (Dagster sensor) — call the same
functions of `service`: `receive_upload` then `process_upload`; held uploads are completed with
`apply_explicit_mapping`; `upload_report` is the preview. No Dagster and no environment reads here.
"""

from ingestion.files.canonical import CANONICAL_DATASETS, LINEAGE_FIELDS, dataset
from ingestion.files.mapping import Mapping
from ingestion.files.security import RejectedFile, sanitised_file_name
from ingestion.files.service import (
    UploadError,
    UploadReceipt,
    apply_explicit_mapping,
    archived_landing_file,
    ingest_landing_file,
    landing_files_by_org,
    process_upload,
    quarantined_rows,
    receive_upload,
    scan_landing_folder,
    upload_report,
)

__all__ = [
    "CANONICAL_DATASETS",
    "LINEAGE_FIELDS",
    "Mapping",
    "RejectedFile",
    "UploadError",
    "UploadReceipt",
    "apply_explicit_mapping",
    "archived_landing_file",
    "dataset",
    "ingest_landing_file",
    "landing_files_by_org",
    "process_upload",
    "quarantined_rows",
    "receive_upload",
    "sanitised_file_name",
    "scan_landing_folder",
    "upload_report",
]
