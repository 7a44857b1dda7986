"""Partitions shared by every time-partitioned asset: market-local days in one explicit timezone."""

from __future__ import annotations

import dagster as dg

from infra.settings import get_settings

_settings = get_settings()

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=_settings.partition_start,
    timezone=_settings.market_timezone,
    end_offset=1,  # today's partition exists so intraday data lands without waiting for midnight
)

# Day-ahead work (forecasts, bids, schedules) is for tomorrow's delivery day, which must exist as a
# partition before midnight; the day mapping onto `daily_partitions` is the identity.
delivery_day_partitions = dg.DailyPartitionsDefinition(
    start_date=_settings.partition_start,
    timezone=_settings.market_timezone,
    end_offset=2,
)
