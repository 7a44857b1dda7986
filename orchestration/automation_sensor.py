"""The automation sensors: they evaluate the automation condition of every asset after bronze, in every domain.

The conditions themselves are built in `assets.shared.automation` and chosen by each domain; bronze is
started by its own sensors and schedule (`assets.bronze`).

The sensors split the assets by what their runs are waiting for, and tag the runs with a queue priority
(`dagster/priority`): the warehouse path (reference data, silver, gold) is what "a file landed, the API serves
it" waits on, so its runs leave the queue before the analyses that follow it (forecasts, optimizations, the
weekly ML, the ClickHouse export). On two cores a cold start queues a dozen runs, and without priorities a landed
day would wait behind backtests. Each sensor also evaluates only its own assets, so a tick of the warehouse path
does not wait for the ML assets' conditions to be evaluated.

The warehouse path has two sensors of the same priority, one per feed: the market (files and ticks: silver
market, the market facts, the KPIs) and trading (CDC: silver trading, its staging, `dim_asset` and the trading
facts). A sensor's tick turns its requests into one backfill, and a backfill holds a day back while another of
its assets that the day reads is requested for a different set of days: with one sensor, a landed file's KPIs
waited for the trading facts' run (measured: a minute on a cold start), although the KPIs need not wait for
them (`assets.gold`, optional parents).
"""

from __future__ import annotations

import dagster as dg

from assets.gold import SILVER_TRADING
from assets.shared.automation import DOWNSTREAM_RUN_TAGS, WAREHOUSE_RUN_TAGS
from infra.settings import get_settings

WAREHOUSE = dg.AssetSelection.groups("reference", "silver", "gold")
# What reads the trading feed and nothing of the market's.
_MARKET_SILVER = dg.AssetSelection.groups("silver") - SILVER_TRADING
TRADING = WAREHOUSE & (SILVER_TRADING.downstream() - _MARKET_SILVER.downstream())
AUTOMATED = dg.AssetSelection.all() - dg.AssetSelection.groups("bronze")
DOWNSTREAM = AUTOMATED - WAREHOUSE


def _automation_sensor(
    name: str, target: dg.AssetSelection, run_tags: dict[str, str], description: str
) -> dg.AutomationConditionSensorDefinition:
    """On by default; several partitions of one asset in a tick become one backfill, run as a single run."""
    return dg.AutomationConditionSensorDefinition(
        name,
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=get_settings().sensor_interval_seconds,
        emit_backfills=True,
        run_tags=run_tags,
        description=description + " Several partitions of one asset in a tick become one backfill, run as a "
        "single run (assets/shared/automation.py).",
    )


automation_sensor = _automation_sensor(
    "automation_sensor",
    WAREHOUSE - TRADING,
    WAREHOUSE_RUN_TAGS,
    "Evaluates the automation conditions of reference data, silver and gold but the trading feed's. Its runs "
    "go first in the run queue.",
)
trading_automation_sensor = _automation_sensor(
    "trading_automation_sensor",
    TRADING,
    WAREHOUSE_RUN_TAGS,
    "Evaluates the automation conditions of the trading feed's silver tables, staging, asset dimension and "
    "facts, apart from the market's: their backfills never hold a landed day's KPIs back. Its runs go first in "
    "the run queue.",
)
downstream_automation_sensor = _automation_sensor(
    "downstream_automation_sensor",
    DOWNSTREAM,
    DOWNSTREAM_RUN_TAGS,
    "Evaluates the automation conditions of what follows gold: forecasts, optimizations, the weekly ML assets, "
    "the ClickHouse export and the nightly operations. Its runs queue behind the warehouse path's and hold one "
    "run slot at most.",
)

AUTOMATION_SENSORS = [automation_sensor, trading_automation_sensor, downstream_automation_sensor]
