"""Frames in and out of the forecasting library: robust CSV reading and the day-slot (24-hour) view.

What belongs here: turning outside data into the standard long frame (`unique_id`, `ds` UTC, `y`, exogenous
columns), validating it, and converting between hourly UTC rows and market-local days of 24 "slots" so that
23/25-hour DST days are handled in one place.

DST convention (the one epftoolbox uses): a local day always has 24 slots (local clock hours 0..23). On a
25-hour day the repeated hour's two values are averaged into one slot; on a 23-hour day the missing slot is
interpolated from its neighbours. Forecasts for a day are mapped back to the day's real UTC hours (23, 24 or
25 rows), the repeated hour getting its slot's value twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# The frame column names, re-exported: the forecasting modules and their callers import them from here.
from ml.frames import FORECAST_COLUMNS as FORECAST_COLUMNS
from ml.frames import ID_COL as ID_COL
from ml.frames import INTERVAL_COLUMNS as INTERVAL_COLUMNS
from ml.frames import TARGET_COL as TARGET_COL
from ml.frames import TIME_COL as TIME_COL


class ForecastDataError(ValueError):
    """Input data that the forecasting library cannot use, with the reason in the message."""


def snake_name(name: str) -> str:
    """A column header normalised: stripped, lower case, non-alphanumerics collapsed to `_`."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def read_price_csv(path: str | Path, unique_id: str | None = None, timezone: str = "UTC") -> pd.DataFrame:
    """The standard long frame read from an epftoolbox-shaped CSV.

    First column: timestamp (any common format, e.g. `2013-01-01 00:00:00` or PJM's `2013/1/1 0:00`);
    second column: price; further columns: exogenous day-ahead forecasts. Header names are normalised with
    `snake_name` (leading spaces and typos are kept as-is apart from case/punctuation). Timestamps without a
    zone are read as local clock time in `timezone` and converted to UTC; the epftoolbox files have smoothed
    DST (24 values every day), so read them with the default `timezone="UTC"` (clock labels kept as they are).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ForecastDataError(f"{path}: cannot read as CSV ({exc})") from exc
    if raw.shape[1] < 2:
        raise ForecastDataError(
            f"{path}: need at least a timestamp and a price column, got {list(raw.columns)}"
        )
    exog_names = [snake_name(c) or f"x{i}" for i, c in enumerate(raw.columns[2:], start=1)]
    if len(set(exog_names)) != len(exog_names):
        exog_names = [f"{n}_{i}" for i, n in enumerate(exog_names, start=1)]
    stamps = pd.to_datetime(raw.iloc[:, 0].astype(str).str.strip(), format="mixed", errors="coerce")
    bad = int(stamps.isna().sum())
    if bad:
        first = raw.iloc[:, 0][stamps.isna()].iloc[0]
        raise ForecastDataError(f"{path}: {bad} unparseable timestamps in the first column, e.g. {first!r}")
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize(timezone, ambiguous="infer", nonexistent="shift_forward")
    frame = pd.DataFrame({TIME_COL: stamps.dt.tz_convert("UTC")})
    frame.insert(0, ID_COL, unique_id or path.stem)
    frame[TARGET_COL] = pd.to_numeric(raw.iloc[:, 1], errors="coerce").astype(float)
    for name, col in zip(exog_names, raw.columns[2:], strict=True):
        frame[name] = pd.to_numeric(raw[col], errors="coerce").astype(float)
    return validated_long_frame(frame)


def validated_long_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` checked and normalised: UTC `ds`, sorted, one row per (unique_id, ds), float columns.

    Duplicated timestamps are rejected (rather than silently dropped) because they usually mean a
    timezone mistake upstream.
    """
    missing = {ID_COL, TIME_COL, TARGET_COL} - set(frame.columns)
    if missing:
        raise ForecastDataError(f"long frame lacks columns {sorted(missing)}; has {list(frame.columns)}")
    out = frame.copy()
    ds = pd.to_datetime(out[TIME_COL])
    if ds.dt.tz is None:
        raise ForecastDataError("column ds must be timezone-aware (UTC); localize it before forecasting")
    out[TIME_COL] = ds.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    out[ID_COL] = out[ID_COL].astype(str)
    dup = out.duplicated([ID_COL, TIME_COL])
    if dup.any():
        example = out.loc[dup, [ID_COL, TIME_COL]].iloc[0].tolist()
        raise ForecastDataError(f"{int(dup.sum())} duplicated (unique_id, ds) rows, e.g. {example}")
    for col in out.columns.difference([ID_COL, TIME_COL]):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out.sort_values([ID_COL, TIME_COL], kind="stable").reset_index(drop=True)


def exogenous_columns(frame: pd.DataFrame) -> list[str]:
    """The exogenous feature columns of a long frame (everything but id, time and target)."""
    return [c for c in frame.columns if c not in (ID_COL, TIME_COL, TARGET_COL)]


def local_date(day: pd.Timestamp | str, timezone: str) -> pd.Timestamp:
    """`day` as a naive local calendar date (aware timestamps are first converted to `timezone`)."""
    ts = pd.Timestamp(day)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(timezone).tz_localize(None)
    return ts.normalize()


def local_day_start_utc(day: pd.Timestamp | str, timezone: str) -> pd.Timestamp:
    """The UTC instant at which local calendar `day` starts in `timezone` (the forecast origin of `day`)."""
    return local_date(day, timezone).tz_localize(timezone).tz_convert("UTC")


def local_day_hours_utc(day: pd.Timestamp | str, timezone: str) -> pd.DatetimeIndex:
    """The real UTC hours of local calendar `day` in `timezone`: 23, 24 or 25 of them."""
    date = local_date(day, timezone)
    start = local_day_start_utc(date, timezone)
    end = local_day_start_utc(date + pd.Timedelta(days=1), timezone)
    return pd.date_range(start, end, freq="h", inclusive="left", name=TIME_COL)


def slot_of_hours(hours_utc: pd.DatetimeIndex, timezone: str) -> np.ndarray:
    """The 0..23 local clock slot of each UTC hour (a repeated DST hour maps to the same slot twice)."""
    return np.asarray(hours_utc.tz_convert(timezone).hour)


@dataclass(frozen=True)
class DayMatrix:
    """One series as market-local days x 24 slots, per variable (`values[var]` is days x 24)."""

    days: pd.DatetimeIndex  # naive local dates, consecutive
    values: dict[str, np.ndarray]

    def row_of(self, day: pd.Timestamp) -> int:
        """The row index of local `day` (KeyError if absent)."""
        return int(self.days.get_loc(pd.Timestamp(day).normalize()))


def day_matrix(series: pd.DataFrame, timezone: str, columns: list[str]) -> DayMatrix:
    """`columns` of ONE series (long frame rows of a single unique_id) as consecutive local days x 24 slots.

    Missing days become NaN rows; a slot missing inside a day (23-hour DST day or a gap) is linearly
    interpolated along the day, repeated hours are averaged.
    """
    local = series[TIME_COL].dt.tz_convert(timezone)
    keyed = pd.DataFrame({"day": local.dt.tz_localize(None).dt.normalize(), "slot": local.dt.hour})
    for col in columns:
        keyed[col] = series[col].to_numpy(dtype=float)
    grouped = keyed.groupby(["day", "slot"], sort=True)[columns].mean()
    if grouped.empty:
        return DayMatrix(pd.DatetimeIndex([]), {c: np.empty((0, 24)) for c in columns})
    day_index = grouped.index.get_level_values("day")
    days = pd.date_range(day_index.min(), day_index.max(), freq="D")
    values: dict[str, np.ndarray] = {}
    for col in columns:
        wide = grouped[col].unstack("slot").reindex(index=days, columns=range(24))
        arr = np.array(wide.to_numpy(dtype=float), copy=True)
        # Only fill slots inside a day that has data: interpolate along hours, edges take the nearest hour.
        gappy = ~np.isnan(arr).all(axis=1) & np.isnan(arr).any(axis=1)
        if gappy.any():
            filled = wide[gappy].T.interpolate(limit_direction="both").T.to_numpy(dtype=float)
            arr[gappy] = filled
        values[col] = arr
    return DayMatrix(days, values)
