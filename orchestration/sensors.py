"""Sensors: react to new data (broker lag, landed files) and to failures."""

import hashlib

import dagster as dg

from assets.bronze.cdc import bronze_cdc_lag_sensor
from assets.bronze.files import landing_files, landing_files_by_org
from infra.settings import get_settings

landing_files_job = dg.define_asset_job(
    "landing_files_job",
    selection=dg.AssetSelection.assets(landing_files),
    description="Land the files waiting in the landing folder.",
)


@dg.sensor(job=landing_files_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_folder_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Start a landing run when files wait in the landing folder; one run per distinct set of files."""
    landing = get_settings().resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    waiting = landing_files_by_org(landing)
    if not waiting:
        return dg.SkipReason(f"no files waiting in {landing}")
    fingerprint = "|".join(f"{org}/{path.name}:{path.stat().st_mtime_ns}" for org, path in waiting)
    run_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, tags={"optibid/files": str(len(waiting))})])


SENSORS: list[dg.SensorDefinition] = [
    bronze_cdc_lag_sensor,
    landing_folder_sensor,
]
