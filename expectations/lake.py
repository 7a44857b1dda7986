"""Validate the rows a run appended to a bronze Delta table against the table's suite.

Bronze tables are append-only: the rows one run landed are the Parquet files its commits added, between the
table version before the run and the version after it. Reading only those files keeps a validation as
cheap as the run was small, whatever the size of the table. Postgres tables (silver, gold) are validated
by `expectations.warehouse`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from expectations.runner import SuiteOutcome, validate_frame
from expectations.suites import SuiteParameters, suite_for
from infra.lake import Lake


def appended_rows(lake: Lake, layer: str, name: str, since_version: int | None, version: int) -> pd.DataFrame:
    """The rows of the files that table versions (`since_version`, `version`] added; every row of `version`
    when `since_version` is None (the table did not exist before)."""
    table = lake.table(layer, name, version)
    if table is None:
        return pd.DataFrame()
    before = lake.table(layer, name, since_version) if since_version is not None and since_version >= 0 else None
    known = set(pa.table(before.get_add_actions(flatten=True)).column("path").to_pylist()) if before else set()
    dataset = table.to_pyarrow_dataset()
    added = [fragment for fragment in dataset.get_fragments() if fragment.path not in known]
    if not added:
        return dataset.schema.empty_table().to_pandas()
    return pads.FileSystemDataset(added, dataset.schema, dataset.format, dataset.filesystem).to_table().to_pandas()


def validate_appended(
    lake: Lake, table: str, since_version: int | None, version: int, *, docs_dir: Path | None = None
) -> SuiteOutcome:
    """Validate the rows appended to `table` (e.g. "bronze.files__prices") after `since_version`, up to
    `version`. No row-count bounds: a run may land any number of rows, none included."""
    layer, name = table.split(".", 1)
    frame = appended_rows(lake, layer, name, since_version, version)
    return validate_frame(frame, suite_for(table), SuiteParameters(min_rows=0), docs_dir=docs_dir)
