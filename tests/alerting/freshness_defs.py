"""A code location for the freshness test: one asset whose freshness policy fails a minute after it is
materialized (the shortest window Dagster allows). Loaded by the real `dagster-daemon` in the test."""

from datetime import timedelta

import dagster as dg

FRESHNESS_PROBE = "alerting_freshness_probe"


@dg.asset(name=FRESHNESS_PROBE, freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=1)))
def freshness_probe() -> int:
    return 1


defs = dg.Definitions(assets=[freshness_probe])
