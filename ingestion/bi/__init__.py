"""BI layer library: the gold-table registry, ClickHouse replication and analytics, Postgres BI access,
and the semantic (HTML) description of the gold layer. No Dagster or FastAPI imports.

`tables` is the registry of gold tables the BI layer knows; `clickhouse` replicates them; `analytics` runs
the ClickHouse queries the API serves; `access` grants organizations' BI roles in Postgres; `semantic`
renders the gold layer's description. The names the API uses are exported here and imported lazily, so
importing the package does not load the ClickHouse driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AnalyticsInputError": "ingestion.bi.analytics",
    "MAX_MINUTES": "ingestion.bi.analytics",
    "MAX_WINDOW_DAYS": "ingestion.bi.analytics",
    "MAX_WINDOW_HOURS": "ingestion.bi.analytics",
    "price_anomalies": "ingestion.bi.analytics",
    "realtime_kpis": "ingestion.bi.analytics",
    "zone_price_correlations": "ingestion.bi.analytics",
    "render_semantic_html": "ingestion.bi.semantic",
    "FCT_PRICES_5MIN": "ingestion.bi.tables",
    "FCT_PRICES_HOURLY": "ingestion.bi.tables",
    "TABLES": "ingestion.bi.tables",
    "TableSpec": "ingestion.bi.tables",
}

if TYPE_CHECKING:
    from ingestion.bi.analytics import MAX_MINUTES as MAX_MINUTES
    from ingestion.bi.analytics import MAX_WINDOW_DAYS as MAX_WINDOW_DAYS
    from ingestion.bi.analytics import MAX_WINDOW_HOURS as MAX_WINDOW_HOURS
    from ingestion.bi.analytics import AnalyticsInputError as AnalyticsInputError
    from ingestion.bi.analytics import price_anomalies as price_anomalies
    from ingestion.bi.analytics import realtime_kpis as realtime_kpis
    from ingestion.bi.analytics import zone_price_correlations as zone_price_correlations
    from ingestion.bi.semantic import render_semantic_html as render_semantic_html
    from ingestion.bi.tables import FCT_PRICES_5MIN as FCT_PRICES_5MIN
    from ingestion.bi.tables import FCT_PRICES_HOURLY as FCT_PRICES_HOURLY
    from ingestion.bi.tables import TABLES as TABLES
    from ingestion.bi.tables import TableSpec as TableSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingestion.bi' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
