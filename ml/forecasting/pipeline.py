"""The production forecasting pipeline: models -> ensemble -> conformal intervals, rolled over days.

What belongs here: the one loop that both the Dagster assets (a single day) and the backtests (many days)
run, so the benchmarked figures are those of the production code.

For each market-local day d (in `timezone`), in order:
1. origin = local midnight of d (in UTC); history = rows with ds < origin; future = d's hours with the
   exogenous columns only (`y` dropped). Nothing at or after the origin except d's exogenous values reaches
   a model; the leakage test in tests/ml proves it by poisoning those values.
2. every `recalibrate_every_days` days, `model.fit(history)`; every day `model.predict(history, future)`.
3. ensemble of the member models: per-hour median, or weights proportional to 1/MAE of each member over the
   previous `weight_window_days` days (equal weights until errors exist).
4. split-conformal intervals: quantiles of the out-of-sample residuals (y - y_hat) of the previous
   `conformal_window_days` days, per local hour slot once there are >= 56 days, pooled over hours before.
   Columns q10/q50/q90 and lo80=q10, hi80=q90, lo95=q2.5, hi95=q97.5; sorted so intervals are ordered.
   With `aci_gamma` > 0 the quantile levels adapt (adaptive conformal inference, Gibbs & Candes 2021): after
   each day the working miscoverage alpha of each interval moves by gamma x (nominal alpha - that day's share
   of misses), so intervals that keep missing widen and over-wide ones narrow (q10/q90 are then the 80%
   interval's adapted bounds).
5. after d, its actuals join the residual store (they are known at d+1's origin).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.forecasting.data import (
    FORECAST_COLUMNS,
    ID_COL,
    TARGET_COL,
    TIME_COL,
    ForecastDataError,
    day_matrix,
    exogenous_columns,
    local_date,
    local_day_hours_utc,
    local_day_start_utc,
    slot_of_hours,
    validated_long_frame,
)
from ml.forecasting.metrics import backtest_metrics
from ml.forecasting.models import DNN, LEAR, Forecaster, forecaster_for

ENSEMBLE_NAME = "ensemble"
# Residual quantile levels behind the interval columns; lo80/hi80 reuse q10/q90.
INTERVAL_LEVELS = (("lo95", 0.025), ("q10", 0.10), ("q50", 0.50), ("q90", 0.90), ("hi95", 0.975))
PER_SLOT_MIN_DAYS = 56

ProgressCallback = Callable[[int, int, pd.Timestamp], None]


@dataclass
class BacktestResult:
    """Forecast rows (standard columns + `y`, `y_naive`, `origin`), metric bundle, settings and wall time."""

    forecasts: pd.DataFrame
    metrics: dict[str, Any]
    settings: dict[str, Any]
    wall_seconds: float

    def overall(self) -> pd.DataFrame:
        """Overall metrics, one row per (unique_id, model)."""
        return pd.DataFrame(self.metrics["overall"])


@dataclass
class _ResidualStore:
    """Out-of-sample residuals per (unique_id, model): day -> (slots, residuals)."""

    days: dict[tuple[str, str], dict[pd.Timestamp, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # Adaptive conformal inference: the working miscoverage level per (unique_id, model, nominal %).
    alphas: dict[tuple[str, str, int], float] = field(default_factory=dict)

    def alpha(self, uid: str, model: str, nominal: int) -> float:
        return self.alphas.get((uid, model, nominal), 1 - nominal / 100)

    def add(self, uid: str, model: str, day: pd.Timestamp, slots: np.ndarray, resid: np.ndarray) -> None:
        ok = ~np.isnan(resid)
        if ok.any():
            self.days[(uid, model)][day] = (slots[ok], resid[ok])

    def window(self, uid: str, model: str, day: pd.Timestamp, n_days: int) -> list[tuple[np.ndarray, np.ndarray]]:
        start = day - pd.Timedelta(days=n_days)
        return [v for d, v in self.days.get((uid, model), {}).items() if start <= d < day]


def _interval_offsets(
    entries: list[tuple[np.ndarray, np.ndarray]], slots: np.ndarray, levels: Sequence[float]
) -> np.ndarray:
    """Residual quantile offsets (rows x levels) for hours with `slots`, NaN without residual history."""
    if not entries:
        return np.full((len(slots), len(levels)), np.nan)
    all_slots = np.concatenate([s for s, _ in entries])
    all_res = np.concatenate([r for _, r in entries])
    pooled = np.quantile(all_res, levels)
    if len(entries) < PER_SLOT_MIN_DAYS:
        return np.tile(pooled, (len(slots), 1))
    out = np.empty((len(slots), len(levels)))
    for i, slot in enumerate(slots):
        res = all_res[all_slots == slot]
        out[i] = np.quantile(res, levels) if res.size >= 20 else pooled
    return out


def weekly_naive(frame: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """The weekly naive reference `y_naive` for every row: y at the same local clock slot 7 days before."""
    parts = []
    for _uid, series in frame.groupby(ID_COL, sort=False):
        mat = day_matrix(series, timezone, [TARGET_COL])
        values = mat.values[TARGET_COL]
        local = series[TIME_COL].dt.tz_convert(timezone)
        day_pos = mat.days.get_indexer(local.dt.tz_localize(None).dt.normalize())
        slot = local.dt.hour.to_numpy()
        prev = day_pos - 7
        naive = np.where(prev >= 0, values[np.clip(prev, 0, None), slot], np.nan)
        parts.append(
            pd.DataFrame({ID_COL: series[ID_COL].to_numpy(), TIME_COL: series[TIME_COL].to_numpy(), "y_naive": naive})
        )
    return pd.concat(parts, ignore_index=True)


class ForecastPipeline:
    """Member models + ensemble + conformal intervals, run day by day (see module docstring).

    `models`: Forecaster instances or short names (`lear`, `seasonal_naive`, `auto_ets`, `auto_arima`, `mstl`,
    `auto_theta`, `nhits`, `nbeatsx`, `tft`). `ensemble`: "median", "inverse_error" or None (no ensemble row;
    with a single member the ensemble is skipped anyway).
    """

    def __init__(
        self,
        models: Sequence[Forecaster | str],
        ensemble: str | None = "median",
        timezone: str = "UTC",
        recalibrate_every_days: int = 1,
        conformal_window_days: int = 182,
        weight_window_days: int = 28,
        aci_gamma: float = 0.0,
    ) -> None:
        if ensemble not in (None, "median", "inverse_error"):
            raise ValueError(f"ensemble must be 'median', 'inverse_error' or None, not {ensemble!r}")
        if recalibrate_every_days < 1:
            raise ValueError("recalibrate_every_days must be >= 1")
        self.models = [forecaster_for(m) if isinstance(m, str) else m for m in models]
        if not self.models:
            raise ValueError("a pipeline needs at least one model")
        self.ensemble = ensemble
        self.timezone = timezone
        self.recalibrate_every_days = recalibrate_every_days
        self.conformal_window_days = conformal_window_days
        self.weight_window_days = weight_window_days
        self.aci_gamma = float(aci_gamma)

    @property
    def member_names(self) -> list[str]:
        """The model labels of the members (one forecaster may emit several)."""
        return [name for m in self.models for name in m.model_names]

    @property
    def primary_model(self) -> str:
        """The label whose forecasts are 'the' pipeline forecast: the ensemble, or the single member."""
        names = self.member_names
        return ENSEMBLE_NAME if self.ensemble and len(names) > 1 else names[0]

    def settings(self) -> dict[str, Any]:
        """The pipeline's configuration as JSON-able values (for tracking and reports)."""
        windows = [m.calibration_windows for m in self.models if isinstance(m, LEAR)]
        return {
            "models": self.member_names,
            "ensemble": self.ensemble,
            "timezone": self.timezone,
            "recalibrate_every_days": self.recalibrate_every_days,
            "conformal_window_days": self.conformal_window_days,
            "weight_window_days": self.weight_window_days,
            "aci_gamma": self.aci_gamma,
            "lear_calibration_windows": [list(w) for w in windows],
        }

    # ------------------------------------------------------------------------------------- the loop ---
    def run(
        self,
        frame: pd.DataFrame,
        start: pd.Timestamp | str,
        end: pd.Timestamp | str,
        progress: ProgressCallback | None = None,
    ) -> pd.DataFrame:
        """Forecast rows (standard columns + `origin`) for every local day from `start` to `end` inclusive."""
        frame = validated_long_frame(frame)
        exog = exogenous_columns(frame)
        days = pd.date_range(local_date(start, self.timezone), local_date(end, self.timezone), freq="D")
        if days.empty:
            raise ValueError(f"empty day range {start}..{end}")
        store = _ResidualStore()
        out: list[pd.DataFrame] = []
        uids = frame[ID_COL].unique()
        for i, day in enumerate(days):
            origin = local_day_start_utc(day, self.timezone)
            hours = local_day_hours_utc(day, self.timezone)
            history = frame[frame[TIME_COL] < origin]
            if history.empty:
                raise ForecastDataError(f"no history before {day.date()}")
            future = self._future_rows(frame, uids, hours, exog, day)
            if i % self.recalibrate_every_days == 0:
                for model in self.models:
                    model.fit(history, self.timezone)
            preds = pd.concat([m.predict(history, future, self.timezone) for m in self.models], ignore_index=True)
            preds = self._with_ensemble(preds, store, day)
            preds = self._with_intervals(preds, store, day)
            preds["origin"] = origin
            actual = frame.loc[frame[TIME_COL].isin(hours), [ID_COL, TIME_COL, TARGET_COL]]
            self._remember(store, preds.merge(actual, on=[ID_COL, TIME_COL], how="left"), day)
            out.append(preds)
            if progress is not None:
                progress(i + 1, len(days), day)
        return pd.concat(out, ignore_index=True)

    def _future_rows(
        self,
        frame: pd.DataFrame,
        uids: np.ndarray,
        hours: pd.DatetimeIndex,
        exog: list[str],
        day: pd.Timestamp,
    ) -> pd.DataFrame:
        rows = frame.loc[frame[TIME_COL].isin(hours), [ID_COL, TIME_COL, *exog]]
        grid = pd.MultiIndex.from_product([uids, hours], names=[ID_COL, TIME_COL]).to_frame(index=False)
        future = grid.merge(rows, on=[ID_COL, TIME_COL], how="left")
        if exog and future[exog].isna().any().any():
            bad = future.loc[future[exog].isna().any(axis=1), ID_COL].unique().tolist()
            raise ForecastDataError(f"exogenous forecasts missing for {day.date()} in zones {bad}")
        return future

    def _with_ensemble(self, preds: pd.DataFrame, store: _ResidualStore, day: pd.Timestamp) -> pd.DataFrame:
        names = self.member_names
        if not self.ensemble or len(names) < 2:
            return preds
        wide = preds.pivot_table(index=[ID_COL, TIME_COL], columns="model", values="y_hat")[names]
        if self.ensemble == "median":
            combined = wide.median(axis=1)
        else:
            parts = []
            for uid, block in wide.groupby(level=ID_COL, sort=False):
                maes = []
                for name in names:
                    entries = store.window(str(uid), name, day, self.weight_window_days)
                    res = np.concatenate([r for _, r in entries]) if entries else np.array([])
                    maes.append(np.mean(np.abs(res)) if res.size else np.nan)
                weights = 1 / np.asarray(maes) if not np.isnan(maes).any() else np.ones(len(names))
                parts.append((block * weights).sum(axis=1) / weights.sum())
            combined = pd.concat(parts)
        ens = combined.rename("y_hat").reset_index()
        ens["model"] = ENSEMBLE_NAME
        return pd.concat([preds, ens[[ID_COL, TIME_COL, "model", "y_hat"]]], ignore_index=True)

    def _with_intervals(self, preds: pd.DataFrame, store: _ResidualStore, day: pd.Timestamp) -> pd.DataFrame:
        parts = []
        for (uid, model), block in preds.groupby([ID_COL, "model"], sort=False):
            slots = slot_of_hours(pd.DatetimeIndex(block[TIME_COL]), self.timezone)
            a80, a95 = (store.alpha(str(uid), str(model), n) for n in (80, 95))
            levels = np.clip([a95 / 2, a80 / 2, 0.5, 1 - a80 / 2, 1 - a95 / 2], 0.0, 1.0)
            offsets = _interval_offsets(
                store.window(str(uid), str(model), day, self.conformal_window_days), slots, levels
            )
            bands = np.sort(block["y_hat"].to_numpy(float)[:, None] + offsets, axis=1)
            block = block.copy()
            for j, (col, _) in enumerate(INTERVAL_LEVELS):
                block[col] = bands[:, j]
            parts.append(block)
        out = pd.concat(parts, ignore_index=True)
        out["lo80"], out["hi80"] = out["q10"], out["q90"]
        return out[FORECAST_COLUMNS]

    def _remember(self, store: _ResidualStore, preds: pd.DataFrame, day: pd.Timestamp) -> None:
        for (uid, model), block in preds.groupby([ID_COL, "model"], sort=False):
            slots = slot_of_hours(pd.DatetimeIndex(block[TIME_COL]), self.timezone)
            store.add(str(uid), str(model), day, slots, (block[TARGET_COL] - block["y_hat"]).to_numpy(float))
            known = block[block[TARGET_COL].notna() & block["lo80"].notna()]
            if self.aci_gamma <= 0 or known.empty:
                continue
            y = known[TARGET_COL].to_numpy(float)
            for nominal, lo, hi in ((80, "lo80", "hi80"), (95, "lo95", "hi95")):
                missed = float(np.mean((y < known[lo].to_numpy(float)) | (y > known[hi].to_numpy(float))))
                key = (str(uid), str(model), nominal)
                # ACI step: a day with more misses than nominal lowers the working alpha (wider intervals).
                alpha = store.alpha(*key) + self.aci_gamma * ((1 - nominal / 100) - missed)
                store.alphas[key] = float(np.clip(alpha, 0.0, 1.0))

    # ---------------------------------------------------------------------------------- entry points ---
    def backtest(
        self,
        frame: pd.DataFrame,
        start: pd.Timestamp | str,
        end: pd.Timestamp | str,
        warmup_days: int = 28,
        progress: ProgressCallback | None = None,
    ) -> BacktestResult:
        """Rolling-origin backtest scored on local days `start`..`end`.

        The `warmup_days` before `start` are forecast too (same loop) so the conformal intervals and
        inverse-error weights have out-of-sample residuals from the first scored day on; they are not scored.
        """
        began = time.perf_counter()
        first = local_date(start, self.timezone) - pd.Timedelta(days=warmup_days)
        frame = validated_long_frame(frame)
        rows = self.run(frame, first, end, progress=progress)
        rows = rows[rows["origin"] >= local_day_start_utc(start, self.timezone)]
        rows = rows.merge(frame[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="left")
        rows = rows.merge(weekly_naive(frame, self.timezone), on=[ID_COL, TIME_COL], how="left")
        rows = rows.reset_index(drop=True)
        wall = time.perf_counter() - began
        settings = {
            **self.settings(),
            "start": str(local_date(start, self.timezone).date()),
            "end": str(local_date(end, self.timezone).date()),
            "warmup_days": warmup_days,
        }
        return BacktestResult(rows, backtest_metrics(rows, self.timezone), settings, wall)

    def forecast_day(
        self,
        frame: pd.DataFrame,
        day: pd.Timestamp | str,
        calibration_days: int = 28,
    ) -> pd.DataFrame:
        """Day-ahead forecast rows (standard columns) for local `day` — what the daily asset publishes.

        `frame` holds history plus the exogenous forecasts for `day` (its `y` may be NaN or absent). The same
        loop runs over the previous `calibration_days` days first, so the intervals are calibrated on
        out-of-sample residuals exactly as in the backtest.
        """
        frame = frame if TARGET_COL in frame else frame.assign(**{TARGET_COL: np.nan})
        target = local_date(day, self.timezone)
        rows = self.run(frame, target - pd.Timedelta(days=calibration_days), target)
        return (
            rows[rows["origin"] == local_day_start_utc(target, self.timezone)]
            .drop(columns="origin")
            .reset_index(drop=True)
        )


PRODUCTION_WINDOWS = (56, 84, 1092, 1456)
# Daily step of adaptive conformal inference (see ForecastPipeline): a day whose 80% interval misses every hour
# widens the next day's interval by 0.016 of nominal level; fixed before the full EPF run (see the README).
PRODUCTION_ACI_GAMMA = 0.02


def production_pipeline(
    timezone: str = "UTC",
    recalibrate_every_days: int = 1,
    alpha_refresh_days: int = 28,
    calibration_windows: Sequence[int] = PRODUCTION_WINDOWS,
    long_window_refit_days: int = 7,
    dnn_refit_days: int | None = 7,
    dnn_members: int = 16,
    ensemble: str = "median",
    aci_gamma: float = PRODUCTION_ACI_GAMMA,
) -> ForecastPipeline:
    """The pipeline the assets and the EPF benchmark run: LEAR and DNN ensembles, combined hour by hour.

    LEAR is averaged over `calibration_windows` (days; the epftoolbox set by default). The short windows
    (< 365 days) are re-estimated every `recalibrate_every_days` (1 = daily, the epftoolbox protocol), the
    long ones every `long_window_refit_days`. Per-hour LASSO alphas are re-selected by AIC every
    `alpha_refresh_days` days for short windows; for long windows every `alpha_refresh_days` of their refits
    (i.e. every alpha_refresh_days x long_window_refit_days / recalibrate_every_days days). See `LEAR`.
    The DNN ensemble (`DNN`, `dnn_members` networks) is retrained every `dnn_refit_days` days (warm-started);
    None leaves it out.
    The published forecast is the `ensemble` ("median" of two members = their mean, as Lago et al.) of the two.
    Interval levels adapt by ACI with step `aci_gamma` (0 = plain split conformal).
    """
    refresh = max(1, round(alpha_refresh_days / recalibrate_every_days))
    long_every = max(1, round(long_window_refit_days / recalibrate_every_days))
    models: list[Forecaster] = [
        LEAR(
            calibration_windows=calibration_windows,
            name="LEAR",
            alpha_refresh_every=refresh,
            long_window_refit_every=long_every,
        )
    ]
    if dnn_refit_days is not None:
        refit = max(1, round(dnn_refit_days / recalibrate_every_days))
        models.append(DNN(n_members=dnn_members, refit_every=refit))
    return ForecastPipeline(
        models,
        ensemble=ensemble if len(models) > 1 else None,
        timezone=timezone,
        recalibrate_every_days=recalibrate_every_days,
        aci_gamma=aci_gamma,
    )
