"""The two windows the weekly drift report compares, read from the warehouse: the last `current_days` of
public facts (with the published price forecasts) against the `reference_days` before them.

What belongs here: choosing the windows from the newest price hour and reading their frames. The comparison
itself is `ml.monitoring.drift`; reads go through `ml.warehouse_reads`. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import psycopg

from ml.forecasting.daily import with_load_feature
from ml.forecasting.data import TIME_COL
from ml.warehouse_reads import MissingFactsError, fact_frame, latest_fact_time, stored_forecasts

# Fewer published forecast rows than this on either side and forecast error is left out of the comparison.
MIN_FORECAST_ROWS = 10


@dataclass
class DriftWindows:
    """Reference [start, split) and current [split, end) frames, UTC, and the published price forecasts."""

    start: pd.Timestamp
    split: pd.Timestamp
    end: pd.Timestamp
    reference: pd.DataFrame
    current: pd.DataFrame
    reference_forecasts: pd.DataFrame  # model "published"
    current_forecasts: pd.DataFrame

    @property
    def with_errors(self) -> bool:
        """Whether both windows hold enough published forecasts to compare forecast error."""
        return min(len(self.reference_forecasts), len(self.current_forecasts)) >= MIN_FORECAST_ROWS


def read_drift_windows(conn: psycopg.Connection, current_days: int, reference_days: int) -> DriftWindows:
    """Price facts with the load feature, and published price forecasts, of both windows.

    Raises MissingFactsError when there are no public prices or a fact table is missing.
    """
    latest = latest_fact_time(conn, "price")
    if latest is None:
        raise MissingFactsError("gold.fct_prices_hourly holds no public prices: nothing to compare")
    end = latest + pd.Timedelta(hours=1)
    split = end - pd.Timedelta(days=current_days)
    start = split - pd.Timedelta(days=reference_days)
    frame = with_load_feature(fact_frame(conn, "price", start, end), fact_frame(conn, "load", start, end))
    stored = stored_forecasts(conn, "price", start, end).assign(model="published")
    return DriftWindows(
        start=start,
        split=split,
        end=end,
        reference=frame[frame[TIME_COL] < split],
        current=frame[frame[TIME_COL] >= split],
        reference_forecasts=stored[stored[TIME_COL] < split],
        current_forecasts=stored[stored[TIME_COL] >= split],
    )
