"""One market day's anomalies against the warehouse: the facts and published forecasts around the day in, the
day's flagged hours replaced in gold.anomalies.

What belongs here: the loop over targets and zones the `gold/anomalies` asset runs for each day of its
partition, choosing per series between forecast residuals and the deseasonalised signal. The detectors are
`ml.monitoring.anomalies`; reads go through `ml.warehouse_reads`, the write through
`ml.forecasting.warehouse`. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd
import psycopg

from ml.forecasting.data import ID_COL, TIME_COL, local_day_hours_utc
from ml.forecasting.warehouse import replace_anomalies
from ml.monitoring.anomalies import detect_anomalies
from ml.warehouse_reads import TARGETS, MissingFactsError, fact_frame, stored_forecasts, zone_timezones

EMPTY_COLUMNS = ["unique_id", "ds", "kind", "value", "expected", "score", "method", "target"]


@dataclass
class DayAnomalies:
    """What `replace_day_anomalies` wrote for one market day."""

    written: int
    rows: pd.DataFrame  # the gold.anomalies rows of the day
    methods: dict[str, str]  # "<zone>/<target>" -> "forecast residual" or "deseasonalised"
    warnings: list[str] = field(default_factory=list)  # targets skipped because their fact table is missing


def replace_day_anomalies(conn: psycopg.Connection, day: date) -> DayAnomalies:
    """Detect the anomalies of each zone's local `day` and replace the day's rows in gold.anomalies."""
    day_ts = pd.Timestamp(day)
    # A week of baseline before the day, and a day after it for level shifts (confirmed a day late).
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=9)
    end = day_ts.tz_localize("UTC") + pd.Timedelta(days=2)
    found, methods, warnings = [], {}, []
    tzs = zone_timezones(conn)
    for target in TARGETS:
        try:
            frame = fact_frame(conn, target, start, end)
        except MissingFactsError as exc:
            warnings.append(str(exc))
            continue
        stored = stored_forecasts(conn, target, start, end)
        for zone in sorted(frame[ID_COL].unique()):
            hours = local_day_hours_utc(day_ts, tzs.get(zone, "UTC"))
            rows = frame[frame[ID_COL] == zone]
            fc = stored[stored[ID_COL] == zone]
            # Forecast residuals are the better signal, but only when forecasts cover the whole window.
            use_fc = not fc.empty and rows[TIME_COL].isin(fc[TIME_COL]).all()
            flagged = detect_anomalies(
                rows,
                fc.assign(model="published") if use_fc else None,
                model="published" if use_fc else None,
            )
            methods[f"{zone}/{target}"] = "forecast residual" if use_fc else "deseasonalised"
            flagged = flagged[flagged[TIME_COL].isin(hours)]
            if not flagged.empty:
                found.append(flagged.assign(target=target))
    out = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=EMPTY_COLUMNS)
    gold = out.rename(columns={ID_COL: "zone", TIME_COL: "ts_utc"}).assign(market_date=day)
    written = replace_anomalies(conn, day, TARGETS, gold)
    return DayAnomalies(written, gold, methods, warnings)
