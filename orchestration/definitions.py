"""The one Dagster `Definitions` of OptiBid: every asset, check, resource, job, schedule and sensor."""

from __future__ import annotations

import dagster as dg

from assets import exports, gold, ml, optimization, reference, silver
from infra.settings import get_settings
from orchestration.resources import resources_from_settings
from orchestration.schedules import SCHEDULES
from orchestration.sensors import SENSORS

_ASSET_MODULES = [reference, silver, gold, ml, optimization, exports]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(_ASSET_MODULES),
    resources=resources_from_settings(get_settings()),
    schedules=SCHEDULES,
    sensors=SENSORS,
)
