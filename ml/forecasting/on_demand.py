"""Forecasts on request: a zone's next hours from the warehouse, or a caller's own series with exogenous
columns, through the same production pipeline the daily `gold/forecasts` asset runs.

What belongs here: checking a request's series (enough history, no gaps, whole local days, exogenous values
for the horizon) with errors that name the field, and the job function the API runs in a killable worker
process (`run_forecast_job`). What does not: the HTTP surface, the job table and the time limit
(`serving_api/routers/forecast_jobs.py`, `serving_api/forecast_jobs.py`). No Dagster here.

A request forecasts whole market-local days from the day after its history (`ml.forecasting.daily`): the
first `horizon_hours` hours of them are returned. Zone requests read the zone's public facts like the daily
asset (load is forecast first and feeds the price model) and use the zone's champion; uploaded series use
the production LEAR + DNN ensemble. Both fall back to the seasonal naive model, with a note, where the history
is too short for LEAR and the DNN (about 36 days); fewer than `MIN_HISTORY_DAYS` days is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from ml.forecasting.daily import MAX_HORIZON_HOURS, forecast_delivery_day, forecast_zone
from ml.forecasting.data import ID_COL, INTERVAL_COLUMNS, TARGET_COL, TIME_COL, ForecastDataError

MIN_HISTORY_DAYS = 14
MAX_HISTORY_HOURS = 2 * 366 * 24  # an uploaded series: at most two years of hourly values
MAX_EXOGENOUS = 8
UPLOAD_ID = "series"
RESULT_COLUMNS = ["ts_utc", "y_hat", *INTERVAL_COLUMNS]


class ForecastRequestError(ValueError):
    """A request the pipeline cannot serve; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_horizon(horizon_hours: int) -> None:
    """Raise ForecastRequestError naming `horizon_hours` outside 1..MAX_HORIZON_HOURS."""
    if not 1 <= horizon_hours <= MAX_HORIZON_HOURS:
        raise ForecastRequestError("horizon_hours", f"must be within 1..{MAX_HORIZON_HOURS} hours, got {horizon_hours}")


def check_history_hours(hours: int, field: str) -> None:
    """Raise ForecastRequestError naming `field` when `hours` of history are fewer than MIN_HISTORY_DAYS."""
    if hours < MIN_HISTORY_DAYS * 24:
        raise ForecastRequestError(
            field,
            f"too little history: {hours} hours ({hours / 24:.1f} days); at least {MIN_HISTORY_DAYS} days "
            f"({MIN_HISTORY_DAYS * 24} hourly values) are needed",
        )


@dataclass
class UploadedSeries:
    """A caller's hourly series: UTC hours, values and exogenous columns (history), and the exogenous values
    of the horizon."""

    frame: pd.DataFrame  # long frame: unique_id, ds, y, exogenous..., history and horizon rows
    first_day: pd.Timestamp  # the first local day forecast
    horizon_hours: int
    timezone: str


def uploaded_series(
    timestamps: Sequence[datetime | str],
    values: Sequence[float | None],
    exogenous: dict[str, Sequence[float | None]],
    future_exogenous: dict[str, Sequence[float | None]],
    horizon_hours: int,
    timezone: str,
) -> UploadedSeries:
    """Check and assemble an uploaded series; ForecastRequestError names the first field at fault.

    `timestamps` must be consecutive UTC hours (a gap is an error, as is a missing value: a forecast from a
    holed history would silently interpolate), ending with the last hour of a local day in `timezone`.
    Every exogenous column has one value per timestamp, and `future_exogenous` the same columns with at least
    `horizon_hours` values (the rest of the last local day repeats the last value).
    """
    check_horizon(horizon_hours)
    n = len(timestamps)
    if n > MAX_HISTORY_HOURS:
        raise ForecastRequestError("series.timestamps", f"has {n} values; at most {MAX_HISTORY_HOURS}")
    if len(values) != n:
        raise ForecastRequestError("series.values", f"has {len(values)} values for {n} timestamps")
    check_history_hours(n, "series.values")
    try:
        ds = pd.DatetimeIndex(pd.to_datetime(list(timestamps), utc=True))
    except (ValueError, TypeError) as exc:
        raise ForecastRequestError("series.timestamps", f"not ISO 8601 timestamps ({exc})") from None
    steps = np.diff(ds.as_unit("s").asi8)
    if len(steps) and (steps != 3600).any():
        i = int(np.flatnonzero(steps != 3600)[0])
        raise ForecastRequestError(
            "series.timestamps",
            f"a series with gaps: {ds[i].isoformat()} is followed by {ds[i + 1].isoformat()} (consecutive UTC "
            "hours are required, sorted, no repeats)",
        )
    y = np.asarray([np.nan if v is None else float(v) for v in values])
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ForecastRequestError(f"series.values[{i}]", f"a series with gaps: no finite value at {ds[i].isoformat()}")
    if len(exogenous) > MAX_EXOGENOUS:
        raise ForecastRequestError("series.exogenous", f"has {len(exogenous)} columns; at most {MAX_EXOGENOUS}")
    if set(future_exogenous) != set(exogenous):
        raise ForecastRequestError(
            "future_exogenous",
            f"must hold the same columns as series.exogenous ({sorted(exogenous)}), got {sorted(future_exogenous)}",
        )
    try:
        last_local = ds[-1].tz_convert(timezone)
    except Exception:
        raise ForecastRequestError("timezone", f"unknown timezone {timezone!r}") from None
    if (last_local + pd.Timedelta(hours=1)).tz_convert(timezone).hour != 0:
        raise ForecastRequestError(
            "series.timestamps",
            f"must end with the last hour of a local day in {timezone} (it ends at {last_local.isoformat()}): "
            "forecasts start at a local midnight",
        )
    first_day = (last_local + pd.Timedelta(hours=1)).tz_localize(None).normalize()
    horizon_days = math.ceil(horizon_hours / 24)
    end_local = (first_day + pd.Timedelta(days=horizon_days)).tz_localize(timezone)
    future_ds = pd.date_range(ds[-1] + pd.Timedelta(hours=1), end_local.tz_convert("UTC"), freq="h", inclusive="left")
    frame = pd.DataFrame({ID_COL: UPLOAD_ID, TIME_COL: ds, TARGET_COL: y})
    future = pd.DataFrame({ID_COL: UPLOAD_ID, TIME_COL: future_ds, TARGET_COL: np.nan})
    for name, column in exogenous.items():
        field = f"series.exogenous.{name}"
        if name in (ID_COL, TIME_COL, TARGET_COL) or not name.replace("_", "").isalnum():
            raise ForecastRequestError(field, "column names are letters, digits and underscores")
        x = _finite(column, field, n, ds)
        ahead = future_exogenous[name]
        if len(ahead) < horizon_hours:
            raise ForecastRequestError(
                f"future_exogenous.{name}", f"has {len(ahead)} values; the horizon needs {horizon_hours}"
            )
        x_future = _finite(
            ahead[: len(future_ds)], f"future_exogenous.{name}", min(len(ahead), len(future_ds)), future_ds
        )
        x_future = np.concatenate([x_future, np.repeat(x_future[-1:], len(future_ds) - len(x_future))])
        frame[name] = x
        future[name] = x_future
    both = pd.concat([frame, future], ignore_index=True)
    both[TIME_COL] = both[TIME_COL].astype("datetime64[ns, UTC]")
    return UploadedSeries(both, first_day, horizon_hours, timezone)


def _finite(column: Sequence[float | None], field: str, n: int, ds: pd.DatetimeIndex) -> np.ndarray:
    if len(column) != n:
        raise ForecastRequestError(field, f"has {len(column)} values for {n} hours")
    x = np.asarray([np.nan if v is None else float(v) for v in column[:n]])
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ForecastRequestError(f"{field}[{i}]", f"a series with gaps: no finite value at {ds[i].isoformat()}")
    return x


def _result(rows: pd.DataFrame, model: str, version: str, source: str, notes: list[str], hours: int) -> dict:
    rows = rows.sort_values(TIME_COL).head(hours)
    out = rows.rename(columns={TIME_COL: "ts_utc"})[RESULT_COLUMNS].copy()
    out["ts_utc"] = out["ts_utc"].map(lambda t: t.isoformat())
    return {
        "model": model,
        "model_version": version,
        "source": source,
        "notes": notes,
        "hours": len(out),
        "rows": [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in out.to_dict(orient="records")
        ],
    }


def forecast_uploaded(series: UploadedSeries, target: str = "price", calibration_days: int = 28) -> dict:
    """The production pipeline's forecast of an uploaded series (see the module docstring)."""
    fc = forecast_zone(
        series.frame,
        UPLOAD_ID,
        target,
        series.first_day,
        series.timezone,
        horizon_days=math.ceil(series.horizon_hours / 24),
        calibration_days=calibration_days,
    )
    return _result(fc.rows, fc.model, fc.model_version, fc.source, fc.notes, series.horizon_hours)


def forecast_zone_on_demand(
    conn: Any,
    zone: str,
    target: str,
    horizon_hours: int,
    first_day: date,
    calibration_days: int = 28,
    history_days: int = 182,
) -> dict:
    """A zone's forecast from `first_day` on, as the daily asset would publish it (not written anywhere)."""
    targets = ["load", "price"] if target == "price" else ["load"]
    run = forecast_delivery_day(
        conn,
        first_day,
        horizon_hours=horizon_hours,
        calibration_days=calibration_days,
        history_days=history_days,
        targets=targets,
        zones=[zone],
    )
    found = [fc for fc in run.published if fc.zone == zone and fc.target == target]
    if not found:
        why = run.skipped.get(f"{zone}/{target}", "no forecast was produced")
        raise ForecastDataError(f"{zone}/{target}: {why}")
    fc = found[0]
    notes = [n for n in run.notes if n.startswith(f"{zone}/")]
    return _result(fc.rows, fc.model, fc.model_version, fc.source, notes, horizon_hours)


def run_forecast_job(request: dict[str, Any], database_url: str, org_id: str) -> dict[str, Any]:
    """The body of one forecast job (run in a worker process): {"status": "succeeded", "result": ...} or
    {"status": "failed", "error": {"field", "message"}} for input the pipeline cannot use.

    `request` is the API's validated request (mode `zone` or `series`). A zone is read through `database_url`
    as the RLS-bound API role scoped to `org_id`, the caller's organization.
    """
    started = time.perf_counter()
    target = request.get("target", "price")
    calibration = int(request.get("calibration_days", 28))
    try:
        if request["mode"] == "series":
            s = request["series"]
            series = uploaded_series(
                s["timestamps"],
                s["values"],
                s.get("exogenous") or {},
                request.get("future_exogenous") or {},
                int(request["horizon_hours"]),
                request.get("timezone", "UTC"),
            )
            result = forecast_uploaded(series, target, calibration)
        else:
            import psycopg

            with psycopg.connect(database_url, autocommit=False) as conn:
                conn.execute("SET ROLE optibid_api")
                conn.execute("SELECT set_config('optibid.org_id', %s, false)", (org_id,))
                result = forecast_zone_on_demand(
                    conn,
                    request["zone"],
                    target,
                    int(request["horizon_hours"]),
                    date.fromisoformat(request["first_day"]),
                    calibration,
                )
                conn.rollback()
    except ForecastRequestError as exc:
        return {"status": "failed", "error": {"field": exc.field, "message": exc.message}}
    except ForecastDataError as exc:
        return {
            "status": "failed",
            "error": {"field": "zone" if request["mode"] == "zone" else "series", "message": str(exc)},
        }
    result["wall_seconds"] = round(time.perf_counter() - started, 3)
    return {"status": "succeeded", "result": result}
