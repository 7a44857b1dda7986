"""The model zoo behind one interface, `Forecaster`.

What belongs here: point-forecast models that turn a history (long frame up to the forecast origin) and the
target day's exogenous rows into `y_hat` per (unique_id, ds, model). Intervals, ensembles and backtesting are
added on top by `ml.forecasting.pipeline`, so every model gets them the same way.

Families:
- `LEAR`: per-hour LASSO (alpha by AIC via LARS) on asinh(median/MAD-normalised) data, features prices d-1,
  d-2, d-3, d-7 (24 h each), exogenous d, d-1, d-7, day-of-week dummies; averaged over calibration windows.
- `DNN`: an ensemble of small MLPs (torch, CPU) on the LEAR feature row predicting the 24 hours jointly, in the
  spirit of the epftoolbox DNN; retrained on a schedule, warm-started.
- `StatsForecastModels`: statsforecast seasonal naive, AutoETS, AutoARIMA (ARIMAX when exogenous columns
  exist), MSTL, AutoTheta, fitted on the recent hourly history at every forecast (they are local models).
- `NeuralForecastModels`: neuralforecast NHITS, NBEATSx, TFT (all with future exogenous), CPU-sized; imported
  lazily so the rest of the library works without torch.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml.forecasting.data import (
    ID_COL,
    TARGET_COL,
    TIME_COL,
    ForecastDataError,
    day_matrix,
    exogenous_columns,
    local_date,
    slot_of_hours,
)


class Forecaster(ABC):
    """A point forecaster. `fit` (re)calibrates on a history; `predict` forecasts the rows of `future`.

    `history`: long frame (unique_id, ds UTC, y, exogenous...) holding ONLY rows before the forecast origin.
    `future`: long frame of the target hours (unique_id, ds, exogenous...; no y) for each series.
    `predict` returns a long frame `unique_id, ds, model, y_hat`. Models that are cheap to fit may fit inside
    `predict`; `fit` is then a no-op. A model never sees data beyond what it is handed.
    """

    name: str = "model"

    def fit(self, history: pd.DataFrame, timezone: str = "UTC") -> Forecaster:
        """Recalibrate on `history` (rows before the origin). Default: nothing to do."""
        return self

    @abstractmethod
    def predict(self, history: pd.DataFrame, future: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
        """Point forecasts `unique_id, ds, model, y_hat` for every row of `future`."""

    @property
    def model_names(self) -> list[str]:
        """The `model` labels this forecaster emits."""
        return [self.name]


# --------------------------------------------------------------------------------------------- LEAR ---


def _robust_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and MAD (scaled to a normal sigma; 1 where the MAD is 0)."""
    median = np.nanmedian(values, axis=0)
    mad = np.nanmedian(np.abs(values - median), axis=0) / 0.6745
    return median, np.where(mad > 1e-9, mad, 1.0)


def lear_features(prices: np.ndarray, exog: list[np.ndarray], days: pd.DatetimeIndex) -> np.ndarray:
    """The LEAR design matrix: one row per day t of the day matrices (NaN where a lag is unavailable).

    Columns: prices of t-1, t-2, t-3, t-7 (24 each), each exogenous variable at t, t-1, t-7 (24 each),
    then 7 day-of-week dummies of t.
    """
    n = prices.shape[0]

    def lag(arr: np.ndarray, k: int) -> np.ndarray:
        out = np.full_like(arr, np.nan)
        if k < n:
            out[k:] = arr[: n - k]
        return out

    blocks = [lag(prices, k) for k in (1, 2, 3, 7)]
    for x in exog:
        blocks += [x, lag(x, 1), lag(x, 7)]
    dummies = np.zeros((n, 7))
    dummies[np.arange(n), np.asarray(days.dayofweek)] = 1.0
    return np.hstack([*blocks, dummies])


def lasso_aic_fits(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column LASSO of every column of `y` on `x`, alpha chosen by AIC along the exact LARS path.

    Returns (coef [k x p], intercept [k], alpha [k]). Same estimator as sklearn's `LassoLarsIC(criterion=
    "aic")`, but the Gram matrix is computed once and shared by all target columns (the 24 hours), which is
    what makes daily/weekly recalibration affordable. The noise variance comes from the full OLS fit when
    there are more rows than features, otherwise from a small OLS on the first and 73rd feature (the d-1 and
    d-7 price of the same hour in LEAR's layout) plus the dummies, per column.
    """
    from sklearn.linear_model import lars_path_gram

    n, p = x.shape
    x_mean = x.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc
    full_rank = n > p + 1
    gram_pinv = np.linalg.pinv(gram) if full_rank else None
    coefs = np.zeros((y.shape[1], p))
    intercepts = np.zeros(y.shape[1])
    alphas = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        yc = y[:, j] - y[:, j].mean()
        xy = xc.T @ yc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path_alphas, _, path = lars_path_gram(xy, gram, n_samples=n, method="lasso", max_iter=2500)
        resid = yc[:, None] - xc @ path
        rss = np.einsum("ik,ik->k", resid, resid)
        if gram_pinv is not None:
            beta = gram_pinv @ xy
            ols_resid = yc - xc @ beta
            noise = float(ols_resid @ ols_resid) / (n - p - 1)
        else:
            noise = _small_ols_noise(xc, yc, j)
        noise = max(noise, 1e-12)
        dof = (np.abs(path) > np.finfo(float).eps).sum(axis=0)
        criterion = n * np.log(2 * np.pi * noise) + rss / noise + 2 * dof
        best = int(np.argmin(criterion))
        coefs[j] = path[:, best]
        alphas[j] = path_alphas[best]
        intercepts[j] = y[:, j].mean() - x_mean @ coefs[j]
    return coefs, intercepts, alphas


def _small_ols_noise(x: np.ndarray, y: np.ndarray, hour: int) -> float:
    cols = [c for c in [hour, 72 + hour] if c < x.shape[1]] + list(range(max(x.shape[1] - 7, 0), x.shape[1]))
    design = np.hstack([x[:, cols], np.ones((x.shape[0], 1))])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    dof = max(len(y) - design.shape[1], 1)
    return float(resid @ resid / dof)


def lasso_fixed_alpha_fits(
    x: np.ndarray, y: np.ndarray, alphas: np.ndarray, coef_init: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column LASSO of `y` on `x` at given per-column `alphas` (coordinate descent on a shared Gram).

    Returns (coef [k x p], intercept [k]). Warm-started from `coef_init` (the previous day's solution), so a
    daily coefficient recalibration costs milliseconds per hour instead of a full LARS path.
    """
    from sklearn.linear_model import enet_path

    _n, p = x.shape
    x_mean = x.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc
    coefs = np.zeros((y.shape[1], p))
    intercepts = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        yc = y[:, j] - y[:, j].mean()
        xy = xc.T @ yc
        init = None if coef_init is None else np.asfortranarray(coef_init[j])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, path, _ = enet_path(
                xc,
                yc,
                l1_ratio=1.0,
                alphas=[float(alphas[j])],
                precompute=gram,
                Xy=xy,
                coef_init=init,
                max_iter=2000,
                tol=1e-4,
                check_input=False,
            )
        coefs[j] = path[:, 0]
        intercepts[j] = y[:, j].mean() - x_mean @ coefs[j]
    return coefs, intercepts


class _LearWindowFit:
    """The 24 per-hour LASSO fits of one calibration window."""

    def __init__(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        previous: _LearWindowFit | None = None,
        n_dummies: int = 7,
    ) -> None:
        n_cont = features.shape[1] - n_dummies
        self.x_med, self.x_mad = _robust_scale(features[:, :n_cont])
        self.y_med, self.y_mad = _robust_scale(targets)
        x = self._transform_x(features)
        y = np.arcsinh((targets - self.y_med) / self.y_mad)
        if previous is None:
            self.coef, self.intercept, self.alpha = lasso_aic_fits(x, y)
        else:
            self.alpha = previous.alpha
            self.coef, self.intercept = lasso_fixed_alpha_fits(x, y, self.alpha, previous.coef)

    def _transform_x(self, features: np.ndarray) -> np.ndarray:
        n_cont = self.x_med.shape[0]
        cont = np.arcsinh((features[:, :n_cont] - self.x_med) / self.x_mad)
        return np.hstack([cont, features[:, n_cont:]])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Prices (rows x 24) for feature rows."""
        z = self._transform_x(features) @ self.coef.T + self.intercept
        return self.y_med + self.y_mad * np.sinh(z)


class LEAR(Forecaster):
    """LASSO-estimated autoregressive day-ahead model, averaged over `calibration_windows` (days).

    A window longer than the available history is shrunk to what exists (at least `min_window` days).

    Every `fit` re-estimates coefficients and scalers on the newest window — except that windows of
    `long_window_days` or more are refit only on every `long_window_refit_every`-th call (a day more or less
    barely moves a multi-year fit, while short windows are the ones that must adapt daily). The LASSO
    penalty of each (window, hour) is re-selected by AIC along the LARS path on every `alpha_refresh_every`-th
    refit of that window (1 = always, as epftoolbox); in between, coefficients are re-estimated at the last
    selected alphas by warm-started coordinate descent, ~50x cheaper than the LARS path.
    """

    def __init__(
        self,
        calibration_windows: Sequence[int] = (56, 84, 1092, 1456),
        name: str = "LEAR",
        min_window: int = 28,
        alpha_refresh_every: int = 1,
        long_window_refit_every: int = 1,
        long_window_days: int = 365,
    ) -> None:
        self.calibration_windows = tuple(int(w) for w in calibration_windows)
        self.name = name
        self.min_window = min_window
        self.alpha_refresh_every = max(int(alpha_refresh_every), 1)
        self.long_window_refit_every = max(int(long_window_refit_every), 1)
        self.long_window_days = int(long_window_days)
        self._window_refits: dict[tuple[str, int], int] = {}
        self._fits: dict[str, dict[int, _LearWindowFit]] = {}
        self._fit_count: dict[str, int] = {}

    def fit(self, history: pd.DataFrame, timezone: str = "UTC") -> LEAR:
        for uid in history[ID_COL].unique():
            feats, targets, _ = usable_training_rows(
                history, uid, timezone, max(self.calibration_windows), self.min_window, self.name
            )
            key = str(uid)
            count = self._fit_count.get(key, 0)
            old = self._fits.get(key, {})
            fits = {}
            for window in sorted(set(min(w, len(targets)) for w in self.calibration_windows)):
                prev = old.get(window)
                long_window = window >= self.long_window_days
                if prev is not None and long_window and count % self.long_window_refit_every:
                    fits[window] = prev  # one more day barely moves a multi-year fit
                    continue
                refits = self._window_refits.get((key, window), 0)
                warm = prev if prev is not None and refits % self.alpha_refresh_every else None
                fits[window] = _LearWindowFit(feats[-window:], targets[-window:], warm)
                self._window_refits[(key, window)] = refits + 1
            self._fits[key] = fits
            self._fit_count[key] = count + 1
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
        missing = [uid for uid in future[ID_COL].unique() if uid not in self._fits]
        if missing:
            self.fit(history[history[ID_COL].isin(missing)], timezone)
        out = []
        for uid, fut in future.groupby(ID_COL, sort=False):
            row = target_day_features(history, fut, timezone, self.name)
            slots = np.mean([f.predict(row)[0] for f in self._fits[str(uid)].values()], axis=0)
            out.append(_slot_rows(uid, fut, slots, self.name, timezone))
        return pd.concat(out, ignore_index=True)


def series_design(series: pd.DataFrame, timezone: str, exog: list[str]) -> tuple[Any, np.ndarray]:
    """Day matrices of one series and its LEAR design matrix (`lear_features`), one row per local day."""
    mat = day_matrix(series, timezone, [TARGET_COL, *exog])
    feats = lear_features(mat.values[TARGET_COL], [mat.values[c] for c in exog], mat.days)
    return mat, feats


def usable_training_rows(
    history: pd.DataFrame, uid: object, timezone: str, days: int, min_days: int, model: str
) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
    """(features, targets, days) of the complete days among the last `days` + 8 of one series' history.

    A day is usable when its 24 prices and all lags exist. Raises ForecastDataError below `min_days`.
    """
    exog = exogenous_columns(history)
    series = history[history[ID_COL] == uid]
    tail_start = series[TIME_COL].max() - pd.Timedelta(days=days + 9)
    series = series[series[TIME_COL] >= tail_start]
    mat, feats = series_design(series, timezone, exog)
    targets = mat.values[TARGET_COL]
    usable = ~(np.isnan(feats).any(axis=1) | np.isnan(targets).any(axis=1))
    rows = np.flatnonzero(usable)
    if rows.size < min_days:
        raise ForecastDataError(
            f"{model} needs at least {min_days} complete days (with d-7 lags) for {uid!r}; history has {rows.size}"
        )
    return feats[rows], targets[rows], mat.days[rows]


def target_day_features(history: pd.DataFrame, fut: pd.DataFrame, timezone: str, model: str) -> np.ndarray:
    """The LEAR feature row (1 x p) of the target day of `fut` (one series' future rows)."""
    exog = exogenous_columns(history)
    uid = fut[ID_COL].iloc[0]
    target_day = local_date(fut[TIME_COL].iloc[0], timezone)
    hist = history[(history[ID_COL] == uid) & (history[TIME_COL] >= fut[TIME_COL].min() - pd.Timedelta(days=9))]
    for col in exog:
        if fut[col].isna().any():
            raise ForecastDataError(f"{uid!r}: exogenous {col!r} missing for target day {target_day.date()}")
    both = pd.concat([hist, fut.assign(**{TARGET_COL: np.nan})], ignore_index=True)
    mat, feats = series_design(both, timezone, exog)
    row = feats[mat.row_of(target_day)][None, :]
    if np.isnan(row).any():
        raise ForecastDataError(f"{uid!r}: history lacks the d-1..d-7 days {model} needs for {target_day.date()}")
    return row


def _slot_rows(uid: object, fut: pd.DataFrame, slots: np.ndarray, model: str, timezone: str) -> pd.DataFrame:
    """24 slot forecasts mapped onto the real hours of `fut` as long forecast rows."""
    hours = pd.DatetimeIndex(fut[TIME_COL])
    return pd.DataFrame({ID_COL: uid, TIME_COL: hours, "model": model, "y_hat": slots[slot_of_hours(hours, timezone)]})


# ---------------------------------------------------------------------------------------------- DNN ---


class _ScaledDesign:
    """LEAR-style input/target scaling: asinh of median/MAD-normalised values (dummies left as 0/1)."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, n_dummies: int = 7) -> None:
        self.n_cont = features.shape[1] - n_dummies
        self.x_med, self.x_mad = _robust_scale(features[:, : self.n_cont])
        self.y_med, self.y_mad = _robust_scale(targets)

    def x(self, features: np.ndarray) -> np.ndarray:
        cont = np.arcsinh((features[:, : self.n_cont] - self.x_med) / self.x_mad)
        return np.hstack([cont, features[:, self.n_cont :]]).astype(np.float32)

    def y(self, targets: np.ndarray) -> np.ndarray:
        return np.arcsinh((targets - self.y_med) / self.y_mad).astype(np.float32)

    def prices(self, z: np.ndarray) -> np.ndarray:
        return self.y_med + self.y_mad * np.sinh(z)


class DNN(Forecaster):
    """An epftoolbox-style DNN ensemble: MLPs mapping the LEAR feature row of day d to its 24 prices jointly.

    Each of `n_members` networks (hidden layers `hidden`, ReLU, dropout) is trained with an L1 loss on
    asinh(median/MAD)-scaled inputs and targets (`_ScaledDesign`, as LEAR) over the last `train_days` complete
    days (members alternate between `train_days` and `alt_train_days` for diversity), with Adam and early
    stopping on a validation slice: a fixed pseudo-random `val_fraction` of calendar days per member, so a day
    stays in the same slice across refits. `input_l1` penalises the first layer's weights (a soft input
    selection, as the L1 option of the epftoolbox DNN). The forecast is the mean of the members.

    `fit` retrains on every `refit_every`-th call (the pipeline may call it daily for LEAR); later refits
    start from the previous weights (warm start) and stop after `warm_patience` epochs without improvement.
    torch runs single-threaded here: the networks are small and the cores are better spent on parallel
    markets/zones.
    """

    def __init__(
        self,
        name: str = "DNN",
        n_members: int = 16,
        hidden: Sequence[int] = (256, 128),
        train_days: int = 1456,
        alt_train_days: int = 1092,
        val_fraction: float = 0.2,
        max_epochs: int = 400,
        patience: int = 20,
        warm_patience: int = 8,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.2,
        input_l1: float = 3e-5,
        refit_every: int = 1,
        min_days: int = 28,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.n_members = int(n_members)
        self.hidden = tuple(int(h) for h in hidden)
        self.train_days = int(train_days)
        self.alt_train_days = int(alt_train_days)
        self.val_fraction = float(val_fraction)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.warm_patience = int(warm_patience)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.input_l1 = float(input_l1)
        self.refit_every = max(int(refit_every), 1)
        self.min_days = int(min_days)
        self.seed = int(seed)
        self._members: dict[str, list[tuple[_ScaledDesign, Any]]] = {}
        self._fit_count: dict[str, int] = {}
        self.last_epochs: list[int] = []

    def _network(self, n_in: int) -> Any:
        import torch

        layers: list[Any] = []
        width = n_in
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU(), torch.nn.Dropout(self.dropout)]
            width = h
        layers.append(torch.nn.Linear(width, 24))
        return torch.nn.Sequential(*layers)

    def _validation_days(self, days: pd.DatetimeIndex, member: int) -> np.ndarray:
        """A fixed pseudo-random share of calendar days (per member), stable as the window rolls."""
        ordinal = np.asarray(days.asi8 // (86_400 * 10**9), dtype=np.int64)
        mixed = (ordinal * 2_654_435_761 + (self.seed * 7919 + member) * 40_503) % 1_000_003
        return (mixed / 1_000_003.0) < self.val_fraction

    def _train_member(
        self, feats: np.ndarray, targets: np.ndarray, days: pd.DatetimeIndex, member: int, warm: Any | None
    ) -> tuple[_ScaledDesign, Any]:
        import torch

        design = _ScaledDesign(feats, targets)
        x, y = torch.from_numpy(design.x(feats)), torch.from_numpy(design.y(targets))
        val = torch.from_numpy(self._validation_days(days, member))
        if int(val.sum()) < 7 or int((~val).sum()) < 7:
            val = torch.zeros(len(days), dtype=torch.bool)
            val[-max(len(days) // 5, 1) :] = True  # tiny histories: the newest fifth
        x_tr, y_tr, x_va, y_va = x[~val], y[~val], x[val], y[val]
        gen = torch.Generator().manual_seed(self.seed * 1000 + member)
        torch.manual_seed(self.seed * 1000 + member)
        net = self._network(x.shape[1])
        if warm is not None:
            net.load_state_dict(warm.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        loss_fn = torch.nn.L1Loss()
        patience = self.patience if warm is None else self.warm_patience
        best, best_state, since, epochs = float("inf"), None, 0, 0
        while epochs < self.max_epochs:
            epochs += 1
            net.train()
            order = torch.randperm(len(x_tr), generator=gen)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(x_tr[idx]), y_tr[idx])
                if self.input_l1 > 0:
                    loss = loss + self.input_l1 * net[0].weight.abs().sum()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                score = float(loss_fn(net(x_va), y_va))
            if score < best - 1e-5:
                best, since = score, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.last_epochs.append(epochs)
        return design, net

    def fit(self, history: pd.DataFrame, timezone: str = "UTC") -> DNN:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for uid in history[ID_COL].unique():
                key = str(uid)
                count = self._fit_count.get(key, 0)
                self._fit_count[key] = count + 1
                if key in self._members and count % self.refit_every:
                    continue
                longest = max(self.train_days, self.alt_train_days)
                feats, targets, days = usable_training_rows(history, uid, timezone, longest, self.min_days, self.name)
                old = self._members.get(key, [])
                self.last_epochs = []
                members = []
                for m in range(self.n_members):
                    window = self.train_days if m % 2 == 0 else self.alt_train_days
                    warm = old[m][1] if m < len(old) else None
                    members.append(self._train_member(feats[-window:], targets[-window:], days[-window:], m, warm))
                self._members[key] = members
        finally:
            torch.set_num_threads(threads)
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
        import torch

        missing = [uid for uid in future[ID_COL].unique() if str(uid) not in self._members]
        if missing:
            self.fit(history[history[ID_COL].isin(missing)], timezone)
        out = []
        for uid, fut in future.groupby(ID_COL, sort=False):
            row = target_day_features(history, fut, timezone, self.name)
            preds = []
            with torch.no_grad():
                for design, net in self._members[str(uid)]:
                    z = net(torch.from_numpy(design.x(row))).numpy().astype(float)
                    preds.append(design.prices(z)[0])
            out.append(_slot_rows(uid, fut, np.mean(preds, axis=0), self.name, timezone))
        return pd.concat(out, ignore_index=True)


# ------------------------------------------------------------------------------------ statsforecast ---

STATS_MODELS = ("seasonal_naive", "auto_ets", "auto_arima", "mstl", "auto_theta")


def _regular_hourly(history: pd.DataFrame, columns: list[str], hours: int) -> pd.DataFrame:
    """The last `hours` hours of each series on a gap-free hourly grid (gaps interpolated), naive UTC ds."""
    parts = []
    for uid, series in history.groupby(ID_COL, sort=False):
        end = series[TIME_COL].max()
        grid = pd.date_range(end - pd.Timedelta(hours=hours - 1), end, freq="h")
        tail = series.set_index(TIME_COL)[columns].reindex(grid).interpolate(limit_direction="both")
        tail = tail.reset_index(names=TIME_COL)
        tail.insert(0, ID_COL, uid)
        parts.append(tail)
    frame = pd.concat(parts, ignore_index=True)
    frame[TIME_COL] = frame[TIME_COL].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


class StatsForecastModels(Forecaster):
    """statsforecast models fitted on the last `input_days` of hourly history at every forecast.

    `kinds` from STATS_MODELS. AutoARIMA becomes ARIMAX with the exogenous columns when `use_exog`; the other
    models are univariate. `n_jobs` parallelises over series.
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("seasonal_naive", "auto_ets", "mstl", "auto_theta"),
        input_days: int = 28,
        use_exog: bool = True,
        n_jobs: int = 1,
    ) -> None:
        unknown = set(kinds) - set(STATS_MODELS)
        if unknown:
            raise ValueError(f"unknown statsforecast kinds {sorted(unknown)}; choose from {STATS_MODELS}")
        self.kinds = tuple(kinds)
        self.input_days = input_days
        self.use_exog = use_exog
        self.n_jobs = n_jobs
        self.name = "+".join(self.kinds)

    @property
    def model_names(self) -> list[str]:
        return list(self.kinds)

    def _models(self) -> list[Any]:
        from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

        build = {
            "seasonal_naive": lambda: SeasonalNaive(season_length=168, alias="seasonal_naive"),
            "auto_ets": lambda: AutoETS(season_length=24, alias="auto_ets"),
            "auto_arima": lambda: AutoARIMA(
                season_length=24, approximation=True, max_p=3, max_q=3, max_P=1, max_Q=1, alias="auto_arima"
            ),
            "mstl": lambda: MSTL(season_length=[24, 168], trend_forecaster=AutoETS(model="ZZN"), alias="mstl"),
            "auto_theta": lambda: AutoTheta(season_length=24, alias="auto_theta"),
        }
        return [build[k]() for k in self.kinds]

    def predict(self, history: pd.DataFrame, future: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
        from statsforecast import StatsForecast

        exog = exogenous_columns(history) if self.use_exog and "auto_arima" in self.kinds else []
        train = _regular_hourly(history, [TARGET_COL, *exog], self.input_days * 24)
        horizon = int(future.groupby(ID_COL).size().max())
        sf = StatsForecast(models=self._models(), freq="h", n_jobs=self.n_jobs)
        x_future = None
        if exog:
            x_future = _padded_future(future, exog, horizon, train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = sf.forecast(df=train, h=horizon, X_df=x_future)
        return _aligned_to_future(fc, future, self.model_names)


def _padded_future(future: pd.DataFrame, exog: list[str], horizon: int, train: pd.DataFrame) -> pd.DataFrame:
    """Future exogenous rows on the hourly grid right after each series' history, `horizon` rows each.

    Shorter (23-hour) days are padded by repeating the last row so every series has `horizon` rows.
    """
    parts = []
    last = train.groupby(ID_COL)[TIME_COL].max()
    for uid, fut in future.groupby(ID_COL, sort=False):
        grid = pd.date_range(last[uid] + pd.Timedelta(hours=1), periods=horizon, freq="h")
        values = fut.assign(**{TIME_COL: fut[TIME_COL].dt.tz_convert("UTC").dt.tz_localize(None)})
        values = values.set_index(TIME_COL)[exog].reindex(grid).ffill().bfill()
        values = values.reset_index(names=TIME_COL)
        values.insert(0, ID_COL, uid)
        parts.append(values)
    return pd.concat(parts, ignore_index=True)


def _aligned_to_future(fc: pd.DataFrame, future: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Wide library output (naive UTC ds, a column per model) as long rows for exactly `future`'s hours."""
    fc = fc.reset_index() if ID_COL not in fc.columns else fc
    fc = fc.assign(**{TIME_COL: pd.to_datetime(fc[TIME_COL]).dt.tz_localize("UTC")})
    keys = future[[ID_COL, TIME_COL]].astype({ID_COL: str})
    merged = keys.merge(fc.astype({ID_COL: str}), on=[ID_COL, TIME_COL], how="left")
    long = merged.melt(id_vars=[ID_COL, TIME_COL], value_vars=models, var_name="model", value_name="y_hat")
    if long["y_hat"].isna().any():
        raise ForecastDataError(
            "model output does not cover every target hour (is the history contiguous up to the forecast origin?)"
        )
    return long


# ------------------------------------------------------------------------------------ neuralforecast ---

NEURAL_MODELS = ("nhits", "nbeatsx", "tft")


class NeuralForecastModels(Forecaster):
    """neuralforecast NHITS / NBEATSx / TFT with the exogenous day-ahead columns as future covariates.

    CPU-sized by default (small networks, `max_steps` training steps, `train_days` of history). `fit` trains;
    `predict` reuses the trained weights on the newest history (so recalibration can be less frequent than
    forecasting). The horizon is 25 hours so DST days fit; shorter days use the first rows.
    """

    horizon = 25

    def __init__(
        self,
        kinds: Sequence[str] = ("nhits", "nbeatsx"),
        input_days: int = 7,
        max_steps: int = 300,
        train_days: int = 365,
        random_seed: int = 1,
        batch_size: int = 32,
    ) -> None:
        unknown = set(kinds) - set(NEURAL_MODELS)
        if unknown:
            raise ValueError(f"unknown neuralforecast kinds {sorted(unknown)}; choose from {NEURAL_MODELS}")
        self.kinds = tuple(kinds)
        self.input_days = input_days
        self.max_steps = max_steps
        self.train_days = train_days
        self.random_seed = random_seed
        self.batch_size = batch_size
        self.name = "+".join(self.kinds)
        self._nf: Any = None
        self._exog: list[str] = []

    @property
    def model_names(self) -> list[str]:
        return [k.upper() if k != "nbeatsx" else "NBEATSx" for k in self.kinds]

    def _models(self, exog: list[str]) -> list[Any]:
        try:
            from neuralforecast.models import NHITS, TFT, NBEATSx
        except ImportError as exc:  # pragma: no cover - depends on the optional install
            raise ImportError("neuralforecast (with torch==2.13.0 CPU) is needed for neural models") from exc
        common: dict[str, Any] = dict(
            h=self.horizon,
            input_size=self.input_days * 24,
            max_steps=self.max_steps,
            scaler_type="robust",
            futr_exog_list=exog or None,
            random_seed=self.random_seed,
            batch_size=self.batch_size,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            val_check_steps=max(self.max_steps, 1),
        )
        build = {
            "nhits": lambda: NHITS(alias="NHITS", mlp_units=[[128, 128]] * 3, **common),
            "nbeatsx": lambda: NBEATSx(alias="NBEATSx", mlp_units=[[128, 128]] * 3, **common),
            "tft": lambda: TFT(alias="TFT", hidden_size=32, **common),
        }
        return [build[k]() for k in self.kinds]

    def fit(self, history: pd.DataFrame, timezone: str = "UTC") -> NeuralForecastModels:
        import logging

        from neuralforecast import NeuralForecast

        for name in ("lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._exog = exogenous_columns(history)
        train = _regular_hourly(history, [TARGET_COL, *self._exog], self.train_days * 24)
        self._nf = NeuralForecast(models=self._models(self._exog), freq="h")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._nf.fit(df=train)
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame, timezone: str = "UTC") -> pd.DataFrame:
        if self._nf is None:
            self.fit(history, timezone)
        recent = _regular_hourly(history, [TARGET_COL, *self._exog], (self.input_days + 2) * 24)
        futr = _padded_future(future, self._exog, self.horizon, recent) if self._exog else None
        if futr is None:
            futr = self._nf.make_future_dataframe(df=recent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = self._nf.predict(df=recent, futr_df=futr)
        return _aligned_to_future(fc, future, self.model_names)


def forecaster_for(name: str, **options: Any) -> Forecaster:
    """A forecaster by short name: `lear`, `dnn`, one of STATS_MODELS, one of NEURAL_MODELS.

    `options` go to the constructor (e.g. `calibration_windows` for lear, `max_steps` for neural ones).
    """
    key = name.strip().lower()
    if key == "lear":
        return LEAR(**options)
    if key == "dnn":
        return DNN(**options)
    if key in STATS_MODELS:
        return StatsForecastModels(kinds=(key,), **options)
    if key in NEURAL_MODELS:
        return NeuralForecastModels(kinds=(key,), **options)
    raise ValueError(f"unknown model {name!r}; choose from lear, dnn, {', '.join(STATS_MODELS + NEURAL_MODELS)}")
