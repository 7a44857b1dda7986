"""Partitions shared by every time-partitioned asset: market-local days in one explicit timezone."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from infra.settings import get_settings
from ingestion.reference import ZONES

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


def market_days_touched(first_ts: datetime, last_ts: datetime) -> list[str]:
    """Keys of the daily partitions holding rows timed from `first_ts` to `last_ts` (UTC).

    Rows are dated by their zone's local day, so the span is read in every reference zone's timezone; keys
    outside the partitions (before the start, or days that have not begun) are left out.
    """
    timezones = {z.timezone for z in ZONES} | {_settings.market_timezone}
    first = min(first_ts.astimezone(ZoneInfo(tz)).date() for tz in timezones)
    last = max(last_ts.astimezone(ZoneInfo(tz)).date() for tz in timezones)
    existing = set(daily_partitions.get_partition_keys())
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return [d.isoformat() for d in days if d.isoformat() in existing]
