"""Spike and level-shift detection on hourly price series, per zone (rows for `gold.anomalies`).

What belongs here: robust, explainable detectors that take the standard long frame (and optionally forecast
rows) and return one row per flagged hour.

Method (all statistics robust: median and MAD scaled by 1.4826, so a score is "sigmas" under normality):
- base signal s: the forecast residual y - y_hat when forecasts are given (the anomaly is what the model
  did not expect), else the deseasonalised price y - p(hour), where the intraday profile p is the median,
  over the previous 7 days at the same hour, of y minus its centred 24-hour rolling median (so p carries no
  level and a level shift does not leak into it).
- spike at hour t: r = s - centred 5-hour rolling median of s (isolates excursions of 1-2 hours);
  z = r / MAD(r over the previous `baseline_hours`); flagged when |z| >= `spike_z`.
- level shift starting at hour t: z = (median(s over [t, t+`shift_window_hours`)) - median(s over the previous
  `baseline_hours`)) / MAD(s over those previous hours); flagged at local maxima of |z| (within
  +-`baseline_hours`) with |z| >= `shift_z`. It needs `shift_window_hours` after t, so shifts are confirmed a
  day late by design.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.forecasting.data import ID_COL, TARGET_COL, TIME_COL

ANOMALY_COLUMNS = ["unique_id", "ds", "kind", "value", "expected", "score", "method"]
MAD_TO_SIGMA = 1.4826


def _rolling_mad(values: pd.Series, window: int, min_periods: int) -> pd.Series:
    """Trailing (excluding the current point) median absolute deviation, scaled to sigma."""
    past = values.shift(1)
    med = past.rolling(window, min_periods=min_periods).median()
    mad = (past - med).abs().rolling(window, min_periods=min_periods).median()
    return MAD_TO_SIGMA * mad


def _one_per_episode(score: pd.Series, candidates: pd.Series, gap_hours: int) -> list[pd.Timestamp]:
    """One timestamp per run of candidates closer than `gap_hours`: the middle of the highest-|score| ties.

    A median over a window is flat for several hours around a step, so several hours tie for the peak.
    """
    times = list(score.index[candidates.to_numpy()])
    episodes: list[list[pd.Timestamp]] = []
    for ts in times:
        if episodes and ts - episodes[-1][-1] <= pd.Timedelta(hours=gap_hours):
            episodes[-1].append(ts)
        else:
            episodes.append([ts])
    chosen = []
    for episode in episodes:
        best = max(abs(score[t]) for t in episode)
        ties = [t for t in episode if abs(score[t]) >= best - 1e-9]
        chosen.append(ties[len(ties) // 2])
    return chosen


def _series_anomalies(
    series: pd.DataFrame,
    spike_z: float,
    shift_z: float,
    shift_window_hours: int,
    baseline_hours: int,
    has_forecast: bool,
) -> pd.DataFrame:
    series = series.set_index(TIME_COL).sort_index()
    grid = pd.date_range(series.index.min(), series.index.max(), freq="h")
    series = series.reindex(grid)
    y = series[TARGET_COL]
    if has_forecast:
        signal, expected_base = y - series["y_hat"], series["y_hat"]
        method = "forecast residual"
    else:
        daily_level = y.rolling(24, center=True, min_periods=12).median()
        profile = (
            (y - daily_level)
            .groupby(grid.hour)
            .transform(lambda v: v.shift(1).rolling(7, min_periods=3).median())
        )
        signal, expected_base = y - profile, profile
        method = "deseasonalised price"
    min_periods = max(24, baseline_hours // 4)
    floor = max(float(np.nanmedian(np.abs(signal - np.nanmedian(signal)))) * 0.1, 1e-6)

    local = signal.rolling(5, center=True, min_periods=3).median()
    excursion = signal - local
    spike_scale = _rolling_mad(excursion, baseline_hours, min_periods).clip(lower=floor)
    spike_score = excursion / spike_scale
    spikes = spike_score.abs() >= spike_z

    before_med = signal.shift(1).rolling(baseline_hours, min_periods=min_periods).median()
    before_scale = _rolling_mad(signal, baseline_hours, min_periods).clip(lower=floor)
    after_med = signal[::-1].rolling(shift_window_hours, min_periods=shift_window_hours).median()[::-1]
    shift_score = (after_med - before_med) / before_scale
    peak = shift_score.abs().rolling(2 * baseline_hours + 1, center=True, min_periods=1).max()
    candidates = (shift_score.abs() >= shift_z) & (shift_score.abs() >= peak)
    shifts = _one_per_episode(shift_score, candidates.fillna(False), baseline_hours)

    rows = []
    for ts in spike_score.index[spikes.fillna(False).to_numpy()]:
        rows.append((ts, "spike", y[ts], y[ts] - excursion[ts], spike_score[ts], f"robust z of {method}"))
    for ts in shifts:
        expected = (
            expected_base[ts] + before_med[ts] if has_forecast else y[ts] - (signal[ts] - before_med[ts])
        )
        rows.append((ts, "level_shift", y[ts], expected, shift_score[ts], f"median shift of {method}"))
    out = pd.DataFrame(rows, columns=[TIME_COL, "kind", "value", "expected", "score", "method"])
    return out


def detect_anomalies(
    frame: pd.DataFrame,
    forecasts: pd.DataFrame | None = None,
    model: str | None = None,
    spike_z: float = 8.0,
    shift_z: float = 4.0,
    shift_window_hours: int = 24,
    baseline_hours: int = 168,
) -> pd.DataFrame:
    """Flagged hours, columns ANOMALY_COLUMNS (`kind` is "spike" or "level_shift"), sorted by zone and time.

    `frame`: standard long frame with `y`. `forecasts`: optional forecast rows (standard columns; `model`
    picks one model, default the only/first one) — then residuals are the base signal.
    """
    has_forecast = forecasts is not None
    data = frame[[ID_COL, TIME_COL, TARGET_COL]]
    if has_forecast:
        chosen = model or str(forecasts["model"].iloc[0])
        rows = forecasts.loc[forecasts["model"] == chosen, [ID_COL, TIME_COL, "y_hat"]]
        data = data.merge(rows, on=[ID_COL, TIME_COL], how="inner")
    parts = []
    for uid, series in data.groupby(ID_COL, sort=True):
        found = _series_anomalies(
            series.drop(columns=ID_COL), spike_z, shift_z, shift_window_hours, baseline_hours, has_forecast
        )
        found.insert(0, ID_COL, uid)
        parts.append(found)
    if not parts:
        return pd.DataFrame(columns=ANOMALY_COLUMNS)
    out = pd.concat(parts, ignore_index=True)[ANOMALY_COLUMNS]
    return out.sort_values([ID_COL, TIME_COL, "kind"]).reset_index(drop=True)
