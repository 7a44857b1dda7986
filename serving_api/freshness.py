"""Freshness and quality of gold tables, read from Dagster's instance through its public API.

A small adapter over `dagster.DagsterInstance`: latest materialization per asset and the latest evaluation
of each asset check. The instance is the one configured in `<OPTIBID_HOME>/dagster_home` (the directory
Dagster uses as DAGSTER_HOME); when it does not exist the adapter reports `configured: false` instead of
failing. Dagster calls are blocking, so callers run them in a worker thread.

Check metadata is filtered before it leaves this module: Great Expectations records failure samples,
observed values and row counts of gold tables that hold organization-private rows, while any caller with
`market:read` may read freshness. Only the keys in `PUBLIC_CHECK_METADATA` (how many expectations ran and
failed, and which ones) are passed on; everything else stays in Dagster's UI for operators.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHECK_EVENTS_SCANNED = 5000
# Metadata keys that describe the suite, never the data: safe to show every organization.
PUBLIC_CHECK_METADATA = frozenset({"evaluated_expectations", "failed_expectations", "failing"})
_MAX_METADATA_CHARS = 2000
GOLD_TABLES = (
    "fct_prices_hourly",
    "fct_prices_5min",
    "fct_load_hourly",
    "fct_generation_hourly",
    "kpi_catalog",
    "kpi_values",
    "forecasts",
    "storage_schedules",
    "bid_curves",
    "unit_commitment",
)


class FreshnessReader:
    def __init__(self, dagster_home: Path) -> None:
        self.dagster_home = dagster_home
        self._instance: Any = None

    @property
    def configured(self) -> bool:
        return self.dagster_home.is_dir()

    def _get_instance(self) -> Any:
        if self._instance is None:
            import dagster as dg

            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def status(self) -> dict[str, Any]:
        """{"configured", "dagster_home", "tables": [...]} for every gold table."""
        if not self.configured:
            return {
                "configured": False,
                "message": f"no Dagster instance at {self.dagster_home}; freshness is unknown",
                "tables": [
                    {"table": f"gold.{t}", "asset_key": None, "last_materialization": None, "checks": []}
                    for t in GOLD_TABLES
                ],
            }
        import dagster as dg

        instance = self._get_instance()
        checks_by_asset = self._latest_checks(instance)
        tables = []
        for table in GOLD_TABLES:
            found: dict[str, Any] = {
                "table": f"gold.{table}",
                "asset_key": None,
                "last_materialization": None,
                "checks": [],
            }
            # dbt models may be keyed with or without the schema prefix.
            for key in (dg.AssetKey(["gold", table]), dg.AssetKey([table])):
                event = instance.get_latest_materialization_event(key)
                checks = checks_by_asset.get(tuple(key.path), [])
                if event is None and not checks:
                    continue
                found["asset_key"] = "/".join(key.path)
                if event is not None:
                    mat = event.asset_materialization
                    found["last_materialization"] = {
                        "at": datetime.fromtimestamp(event.timestamp, UTC).isoformat(),
                        "run_id": event.run_id or None,
                        "partition": mat.partition if mat else None,
                    }
                found["checks"] = checks
                break
            tables.append(found)
        return {"configured": True, "message": None, "tables": tables}

    @staticmethod
    def _latest_checks(instance: Any) -> dict[tuple[str, ...], list[dict[str, Any]]]:
        """Latest evaluation of each check, by asset key path (one read of the recent check events)."""
        import dagster as dg

        records = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION),
            limit=CHECK_EVENTS_SCANNED,
            ascending=False,
        )
        latest: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
        for record in records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            per_asset = latest.setdefault(tuple(evaluation.asset_key.path), {})
            if evaluation.check_name in per_asset:
                continue
            severity = getattr(evaluation.severity, "value", str(evaluation.severity))
            per_asset[evaluation.check_name] = {
                "name": evaluation.check_name,
                "passed": bool(evaluation.passed),
                "severity": str(severity),
                "at": datetime.fromtimestamp(record.timestamp, UTC).isoformat(),
                "metadata": public_check_metadata(evaluation.metadata or {}),
            }
        return {path: sorted(c.values(), key=lambda c: c["name"]) for path, c in latest.items()}


def public_check_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """The organization-neutral part of a check's metadata: allowed keys only, values as bounded strings."""
    out = {}
    for key, value in metadata.items():
        if key not in PUBLIC_CHECK_METADATA:
            continue
        out[key] = str(getattr(value, "value", value))[:_MAX_METADATA_CHARS]
    return out
