"""Partitions shared by every time-partitioned asset, and the one way a run reads its partition window.

Partitions are market-local days in one explicit timezone. A run's window is always read through
`market_date_window`: market dates with both ends included, as dbt's `min_date`/`max_date`, the expectation
suites and the gold table signals take them. Partition mappings that belong to one domain stay there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from infra.settings import get_settings
from infra.signals import market_dates
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


@dataclass(frozen=True)
class MarketDateWindow:
    """The market dates of a run's partition window, `first` and `last` both included."""

    first: date
    last: date

    @property
    def dates(self) -> list[date]:
        """Every market date of the window, in order."""
        return market_dates(self.first, self.last)

    def __str__(self) -> str:
        return f"{self.first} .. {self.last}"


def market_date_window(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> MarketDateWindow:
    """The market dates of the run's partition window: one day, or a whole backfill run as one."""
    window = context.partition_time_window
    # The window ends at the midnight that starts the day after its last one (partition timezone).
    return MarketDateWindow(window.start.date(), window.end.date() - timedelta(days=1))


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
