"""Forecast-accuracy metrics on the standard forecast frame (with actuals attached).

What belongs here: pure functions from a forecast frame that carries `y` (actual) and `y_naive` (the weekly
naive reference: same local clock hour seven days earlier) to numbers and tables. Definitions follow the
epftoolbox conventions:

- MAE, RMSE on prices.
- sMAPE = mean(2|y - y_hat| / (|y| + |y_hat|)) in percent (pairs with both zero count as 0).
- rMAE = MAE(model) / MAE(weekly naive) over the same rows.
- pinball = mean pinball loss over the quantiles present (q10, q50, q90, and lo95/hi95 as q2.5/q97.5).
- coverage80 / coverage95 = share of actuals inside [lo80, hi80] / [lo95, hi95] (nominal 0.80 / 0.95).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.forecasting.data import ID_COL, TIME_COL

QUANTILE_COLUMNS = {"lo95": 0.025, "q10": 0.10, "q50": 0.50, "q90": 0.90, "hi95": 0.975}


def smape(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Symmetric MAPE in percent (epftoolbox definition)."""
    y, y_hat = np.asarray(y, dtype=float), np.asarray(y_hat, dtype=float)
    denom = np.abs(y) + np.abs(y_hat)
    ratio = np.divide(2 * np.abs(y - y_hat), denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    return float(np.mean(ratio) * 100)


def pinball_loss(y: np.ndarray, quantile_pred: np.ndarray, level: float) -> float:
    """Mean pinball (quantile) loss of `quantile_pred` as the `level` quantile of `y`."""
    diff = np.asarray(y, dtype=float) - np.asarray(quantile_pred, dtype=float)
    return float(np.mean(np.maximum(level * diff, (level - 1) * diff)))


def metrics_of(rows: pd.DataFrame) -> dict[str, float]:
    """MAE, RMSE, sMAPE, rMAE, pinball, coverage80/95 and row count `n` of forecast rows with `y`.

    Rows without an actual are ignored; rMAE needs `y_naive`, interval metrics need the interval columns.
    """
    rows = rows[rows["y"].notna() & rows["y_hat"].notna()]
    y = rows["y"].to_numpy(float)
    err = y - rows["y_hat"].to_numpy(float)
    out: dict[str, float] = {"n": float(len(rows))}
    if len(rows) == 0:
        return out
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["smape"] = smape(y, rows["y_hat"].to_numpy(float))
    if "y_naive" in rows and rows["y_naive"].notna().all():
        naive_mae = float(np.mean(np.abs(y - rows["y_naive"].to_numpy(float))))
        out["rmae"] = out["mae"] / naive_mae if naive_mae > 0 else float("nan")
    levels = [(c, q) for c, q in QUANTILE_COLUMNS.items() if c in rows and rows[c].notna().all()]
    if levels:
        out["pinball"] = float(np.mean([pinball_loss(y, rows[c].to_numpy(float), q) for c, q in levels]))
    for nominal, lo, hi in ((80, "lo80", "hi80"), (95, "lo95", "hi95")):
        if lo in rows and hi in rows and rows[lo].notna().all():
            inside = (y >= rows[lo].to_numpy(float)) & (y <= rows[hi].to_numpy(float))
            out[f"coverage{nominal}"] = float(np.mean(inside))
    return out


def metrics_table(forecasts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`metrics_of` per group of `by` columns (e.g. ["unique_id", "model"], or plus "hour" / "day")."""
    records = []
    for key, group in forecasts.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(by, key, strict=True)), **metrics_of(group)})
    return pd.DataFrame.from_records(records)


def with_local_calendar(forecasts: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """`forecasts` plus `day` (local date) and `hour` (local clock hour) for per-day/per-hour tables."""
    local = forecasts[TIME_COL].dt.tz_convert(timezone)
    return forecasts.assign(day=local.dt.tz_localize(None).dt.normalize(), hour=local.dt.hour)


def backtest_metrics(forecasts: pd.DataFrame, timezone: str) -> dict[str, object]:
    """The JSON-able metric bundle of a backtest: overall, per hour and per day, for each (zone, model)."""
    frame = with_local_calendar(forecasts, timezone)
    overall = metrics_table(frame, [ID_COL, "model"])
    per_hour = metrics_table(frame, [ID_COL, "model", "hour"])
    per_day = metrics_table(frame, [ID_COL, "model", "day"])
    per_day["day"] = per_day["day"].dt.strftime("%Y-%m-%d")
    return {
        "overall": overall.to_dict(orient="records"),
        "per_hour": per_hour.to_dict(orient="records"),
        "per_day": per_day.to_dict(orient="records"),
    }
