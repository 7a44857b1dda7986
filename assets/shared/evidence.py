"""Links from Dagster metadata to the evidence behind a result: report pages and MLflow runs.

What belongs here: building the `MetadataValue.url`/`path` entries that check results and materializations
carry, so a data engineer moves from a red check or a drift warning in the Dagster UI to the page that
explains it in one click. The URLs point at the platform's landing page (`app/portal.py`, which serves
`<home>/reports`) and at the MLflow UI, as the settings name them (OPTIBID_PORTAL_*, OPTIBID_MLFLOW_UI_*).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from infra.settings import get_settings


def evidence_links(path: str | Path | None, name: str) -> dict[str, dg.MetadataValue]:
    """`<name>`: the URL of a report file on the landing page, and `<name>_path`: the file itself; nothing
    when there is no file."""
    if path is None:
        return {}
    links: dict[str, dg.MetadataValue] = {f"{name}_path": dg.MetadataValue.path(str(path))}
    url = get_settings().report_url(path)
    if url is not None:
        links[name] = dg.MetadataValue.url(url)
    return links


def report_urls(paths: Iterable[str | Path]) -> list[str]:
    """The landing page's URLs of report files (files outside the reports folder are left out)."""
    settings = get_settings()
    return [url for url in (settings.report_url(p) for p in paths) if url is not None]


def report_folder_link(section: str) -> dg.MetadataValue:
    """The landing page's listing of one dated report folder (drift, forecasts, optimization)."""
    return dg.MetadataValue.url(f"{get_settings().portal_url}/browse/{section}")


def mlflow_run_link(experiment_id: str, run_id: str) -> dg.MetadataValue:
    """The MLflow UI page of one run."""
    return dg.MetadataValue.url(get_settings().mlflow_run_url(experiment_id, run_id))
