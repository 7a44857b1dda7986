"""Jobs: the bronze asset selections that sensors and schedules start (later layers run from automation)."""

import dagster as dg

from assets.bronze.cdc import ALL_KEYS as CDC_ASSET_KEYS
from assets.bronze.files import landing_files

bronze_cdc_job = dg.define_asset_job(
    "bronze_cdc_job",
    selection=dg.AssetSelection.assets(*CDC_ASSET_KEYS),
    description="Drain every CDC topic into bronze up to the high-water marks seen at run start.",
)

landing_files_job = dg.define_asset_job(
    "landing_files_job",
    selection=dg.AssetSelection.assets(landing_files),
    description="Land the files waiting in the landing folder.",
)

JOBS = [bronze_cdc_job, landing_files_job]
