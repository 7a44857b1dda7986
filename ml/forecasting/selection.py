"""Champion selection: which pipeline publishes a zone's forecast, decided on one rolling-origin backtest.

What belongs here: the candidate pipelines, running them over the same forecast origins, and the rule that
picks a zone's champion. No Dagster and no SQL (`ml.forecasting.backtests` runs this weekly for every zone;
`ml.forecasting.daily` turns the stored choice back into a pipeline for the daily forecast).

The rule: the production ensemble (LEAR + DNN, `production_pipeline`) is always a candidate and the
incumbent. A single model replaces it for a zone only when its selection metric, computed on exactly the same
scored hours (same origins, same actuals), is strictly lower than the ensemble's; a tie keeps the ensemble.
When the ensemble cannot be backtested (history too short), no champion is chosen: a single model cannot
have beaten it.

The LEAR and DNN candidates are the production members themselves (same configuration, same interval
settings), so their backtest rows come from the production run at no extra cost and a LEAR or DNN champion
publishes exactly what was scored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from ml.forecasting.data import ID_COL, TARGET_COL, TIME_COL, ForecastDataError, local_date
from ml.forecasting.metrics import backtest_metrics
from ml.forecasting.models import forecaster_for
from ml.forecasting.pipeline import ENSEMBLE_NAME, BacktestResult, ForecastPipeline, production_pipeline

# Metrics where lower is better; coverage is a calibration property, not a ranking.
SELECTION_METRICS = ("mae", "rmse", "smape", "rmae", "pinball")
ProductionFactory = Callable[[str], ForecastPipeline]


def _production(timezone: str) -> ForecastPipeline:
    return production_pipeline(timezone=timezone)


def model_key(label: str) -> str:
    """The stored name of a model label (`LEAR` -> `lear`, `ensemble` -> `ensemble`): what
    ml.model_selection records and `candidate_pipeline` accepts."""
    return label.strip().lower()


def candidate_pipeline(model: str, timezone: str, production: ProductionFactory = _production) -> ForecastPipeline:
    """The pipeline that publishes `model` (a stored name or label) for a zone in `timezone`.

    `ensemble` is the production pipeline; `lear` and `dnn` are that pipeline's member alone; any other name
    is `forecaster_for(name)` alone. All share the production pipeline's interval settings.
    """
    prod = production(timezone)
    key = model_key(model)
    if key == ENSEMBLE_NAME:
        return prod
    members = [m for m in prod.models if [model_key(n) for n in m.model_names] == [key]]
    return ForecastPipeline(
        members[:1] or [forecaster_for(key)],
        ensemble=None,
        timezone=timezone,
        recalibrate_every_days=prod.recalibrate_every_days,
        conformal_window_days=prod.conformal_window_days,
        weight_window_days=prod.weight_window_days,
        aci_gamma=prod.aci_gamma,
    )


@dataclass
class ZoneSelection:
    """One zone's candidates backtested over the same origins, and the champion the rule picked."""

    zone: str
    result: BacktestResult  # rows of every candidate (scored on common hours), metrics, settings
    candidates: list[str]  # model labels, the ensemble first
    champion: str  # label of the chosen model
    metric: str
    value: float  # the champion's metric
    ensemble_value: float  # the ensemble's metric on the same hours
    pipeline: ForecastPipeline  # the champion's pipeline, unfitted (what the registry stores)
    notes: list[str] = field(default_factory=list)

    @property
    def champion_key(self) -> str:
        """The champion as stored in ml.model_selection (`ensemble`, `lear`, `seasonal_naive`, ...)."""
        return model_key(self.champion)

    def metrics_by_model(self) -> dict[str, dict[str, float]]:
        """Overall metrics per candidate label: {model: {mae, rmae, coverage80, ...}}."""
        return {
            str(r["model"]): {k: v for k, v in r.items() if k not in (ID_COL, "model")}
            for r in self.result.overall().to_dict(orient="records")
        }


def select_champion(overall: pd.DataFrame, metric: str, incumbent: str = ENSEMBLE_NAME) -> tuple[str, float, float]:
    """(champion label, its metric, the incumbent's metric) from one zone's overall metrics table.

    A challenger wins only with a strictly lower `metric` than the incumbent; ties between challengers go to
    the alphabetically first label so the choice is reproducible.
    """
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric must be one of {SELECTION_METRICS} (lower is better), not {metric!r}")
    values = overall.set_index("model")[metric].astype(float) if metric in overall else pd.Series(dtype=float)
    if incumbent not in values.index or math.isnan(values[incumbent]):
        raise ForecastDataError(f"the {incumbent} has no {metric} on this backtest: nothing to compare against")
    held = float(values[incumbent])
    challengers = values.drop(index=incumbent).dropna()
    if challengers.empty:
        return incumbent, held, held
    best = sorted(challengers.items(), key=lambda kv: (kv[1], str(kv[0])))[0]
    if best[1] < held:
        return str(best[0]), float(best[1]), held
    return incumbent, held, held


def backtest_candidates(
    frame: pd.DataFrame,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    timezone: str,
    models: Sequence[str],
    warmup_days: int = 7,
    production: ProductionFactory = _production,
) -> tuple[BacktestResult, list[str]]:
    """The production ensemble and the single `models`, backtested on local days `start`..`end`.

    Every candidate runs the same loop over the same origins; rows are then cut to the (zone, hour) pairs
    every candidate forecast, so the metrics compare like with like. Raises ForecastDataError when the
    production pipeline cannot run on `frame`; a single model that cannot is left out (noted in settings).
    """
    keys = list(dict.fromkeys(model_key(m) for m in models if model_key(m) != ENSEMBLE_NAME))
    for key in keys:
        forecaster_for(key)  # unknown names fail here, before an expensive run
    began = time.perf_counter()
    prod = production(timezone)
    try:
        ensemble = prod.backtest(frame, start, end, warmup_days=warmup_days)
    except ForecastDataError as exc:
        raise ForecastDataError(f"the production ensemble cannot be backtested: {exc}") from exc
    members = {model_key(n): n for n in prod.member_names}
    wanted = [ENSEMBLE_NAME] + [members[k] for k in keys if k in members]
    parts = [ensemble.forecasts[ensemble.forecasts["model"].isin(wanted)]]
    labels, left_out = list(wanted), {}
    for key in (k for k in keys if k not in members):
        pipe = candidate_pipeline(key, timezone, production)
        try:
            parts.append(pipe.backtest(frame, start, end, warmup_days=warmup_days).forecasts)
        except ForecastDataError as exc:
            left_out[key] = str(exc)
            continue
        labels.extend(pipe.member_names)
    rows = pd.concat(parts, ignore_index=True)
    scored = rows[rows[TARGET_COL].notna()]
    complete = scored.groupby([ID_COL, TIME_COL])["model"].nunique() == len(labels)
    common = complete[complete].index
    rows = rows.set_index([ID_COL, TIME_COL]).loc[lambda r: r.index.isin(common)].reset_index()
    settings: dict[str, Any] = {
        **ensemble.settings,
        "candidates": labels,
        "left_out": left_out,
        "production": prod.settings(),
        "start": str(local_date(start, timezone).date()),
        "end": str(local_date(end, timezone).date()),
    }
    result = BacktestResult(rows, backtest_metrics(rows, timezone), settings, time.perf_counter() - began)
    return result, labels


def select_zone(
    frame: pd.DataFrame,
    zone: str,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    timezone: str,
    models: Sequence[str],
    metric: str = "mae",
    warmup_days: int = 7,
    production: ProductionFactory = _production,
) -> ZoneSelection:
    """Backtest the candidates of one zone (`frame` holds only that zone) and apply the selection rule."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric must be one of {SELECTION_METRICS} (lower is better), not {metric!r}")
    result, labels = backtest_candidates(frame, start, end, timezone, models, warmup_days, production)
    overall = result.overall()
    overall = overall[overall[ID_COL] == zone] if not overall.empty else overall
    champion, value, held = select_champion(overall, metric)
    notes = [f"{m} left out: {why}" for m, why in result.settings["left_out"].items()]
    if champion != ENSEMBLE_NAME:
        notes.append(f"{champion} beats the production ensemble on {metric}: {value:.4g} < {held:.4g}")
    return ZoneSelection(
        zone,
        result,
        labels,
        champion,
        metric,
        value,
        held,
        candidate_pipeline(champion, timezone, production),
        notes,
    )


def relabelled(result: BacktestResult, label: str) -> BacktestResult:
    """The backtest result with unique_id set to `label` (e.g. a load run logged under `<zone>-load`)."""
    metrics = {k: [{**r, ID_COL: label} for r in v] for k, v in result.metrics.items()}
    return replace(result, forecasts=result.forecasts.assign(**{ID_COL: label}), metrics=metrics)


def complete_day_window(frame: pd.DataFrame, timezone: str, days: int) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first, last) local days of the `days`-day scoring window ending on the last complete local day
    (>= 23 hours) of `frame`, or None when it has no complete day."""
    local = frame[TIME_COL].dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize()
    counts = local.value_counts()
    full = counts[counts >= 23].index
    if full.empty:
        return None
    end = full.max()
    return end - pd.Timedelta(days=max(1, days) - 1), end
