"""Day-ahead gate closures per market: the local time by which bids for tomorrow's delivery day are due.

Belongs here: the small, versioned table of when each day-ahead auction closes, in the market's own
timezone, and the cron expressions of "a lead time before each closure" that the platform runs its
forecasts and optimizations on. The times are the commonly published day-ahead deadlines (2024); check
the exchange's current rulebook before submitting real bids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta


@dataclass(frozen=True)
class GateClosure:
    market: str
    closes_at: time  # local wall-clock time on the day before delivery
    timezone: str


GATE_CLOSURES: dict[str, GateClosure] = {
    g.market: g
    for g in (
        GateClosure("PJM", time(10, 30), "America/New_York"),
        GateClosure("NYISO", time(5, 0), "America/New_York"),
        GateClosure("ERCOT", time(10, 0), "America/Chicago"),
        GateClosure("CAISO", time(10, 0), "America/Los_Angeles"),
        GateClosure("IEX", time(12, 0), "Asia/Kolkata"),
        # SDAC: one European closure at 12:00 CET for EPEX and Nord Pool alike.
        GateClosure("EPEX", time(12, 0), "Europe/Paris"),
        GateClosure("NORDPOOL", time(12, 0), "Europe/Oslo"),
    )
}


def run_before_gate_closure(lead: timedelta) -> list[tuple[str, str]]:
    """(cron, timezone) of a daily run `lead` before each market's gate closure, one per distinct time.

    Markets whose closures coincide in the same timezone share one entry.
    """
    crons: dict[tuple[str, str], None] = {}
    for gate in GATE_CLOSURES.values():
        at = datetime.combine(datetime(2000, 1, 2), gate.closes_at) - lead
        crons[(f"{at.minute} {at.hour} * * *", gate.timezone)] = None
    return list(crons)
