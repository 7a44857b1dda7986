"""Sensors: react to new data (broker lag, landed files) and to failures."""

from __future__ import annotations

import dagster as dg

SENSORS: list[dg.SensorDefinition] = [
    # areas append their sensors here
]
