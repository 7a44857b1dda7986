"""The daily forecast: one zone's published forecast (`forecast_zone`) and the run over every zone and target
of a delivery day (`forecast_delivery_day`), then its publication, coverage and plots.

What belongs here: which pipeline a zone gets (its champion from `ml.forecasting.selection`, the production
LEAR + DNN ensemble when none was selected, or a fallback when the history is too short), load forecasts
feeding price forecasts as the exogenous `load` column, multi-day horizons, and the loop over zones and
targets the `gold/forecasts` asset runs. Reads go through `ml.warehouse_reads`, writes through
`ml.forecasting.warehouse`; the weekly champion selection is `ml.forecasting.backtests`. No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from ml.forecasting.data import (
    ID_COL,
    INTERVAL_COLUMNS,
    TARGET_COL,
    TIME_COL,
    ForecastDataError,
    local_date,
    local_day_hours_utc,
    slot_of_hours,
)
from ml.forecasting.pipeline import ENSEMBLE_NAME, ForecastPipeline, production_pipeline
from ml.forecasting.selection import candidate_pipeline
from ml.forecasting.tracking import forecast_plot_png
from ml.forecasting.warehouse import GOLD_FORECAST_COLUMNS, replace_forecasts
from ml.warehouse_reads import TARGETS, Champion, champions, fact_frame, stored_forecasts, zone_timezones

LOAD_FEATURE = "load"
# A zone's load history must cover this share of its price hours to be used as a price feature.
MIN_LOAD_COVERAGE = 0.9
MAX_HORIZON_HOURS = 168


# --- frames ---------------------------------------------------------------------------------------------


def with_load_feature(prices: pd.DataFrame, load: pd.DataFrame) -> pd.DataFrame:
    """`prices` plus the zone's load as exogenous column `load`, for zones whose load covers their prices.

    Zones with too little load history keep NaN there; `zone_frame` drops the column for them, so they are
    forecast univariately instead of losing days.
    """
    merged = prices.merge(load.rename(columns={TARGET_COL: LOAD_FEATURE}), on=[ID_COL, TIME_COL], how="left")
    coverage = merged[LOAD_FEATURE].notna().groupby(merged[ID_COL]).mean()
    poor = coverage[coverage < MIN_LOAD_COVERAGE].index
    merged.loc[merged[ID_COL].isin(poor), LOAD_FEATURE] = np.nan
    return merged


def zone_frame(frame: pd.DataFrame, zone: str) -> pd.DataFrame:
    """One zone's rows, without exogenous columns that are entirely missing for it."""
    rows = frame[frame[ID_COL] == zone].reset_index(drop=True)
    empty = [c for c in rows.columns if c not in (ID_COL, TIME_COL, TARGET_COL) and rows[c].isna().all()]
    return rows.drop(columns=empty)


# --- the daily forecast of one zone -----------------------------------------------------------------------


@dataclass
class ZoneForecast:
    """Published rows of one zone and target (forecast-frame columns, primary model) and how they came about.

    `model` names what produced the rows: `ensemble` (the production LEAR + DNN ensemble), a single model's
    label, or `median(a+b)` for a multi-model fallback; `model_version` fingerprints its configuration (and
    the registry version when a backtest selected it).
    """

    zone: str
    target: str
    rows: pd.DataFrame
    model: str
    model_version: str
    source: str  # "champion", "production", "given" or "fallback"
    notes: list[str] = field(default_factory=list)


def pipeline_version(pipeline: ForecastPipeline) -> str:
    """A short, stable fingerprint of a pipeline's configuration (what `model_version` records)."""
    digest = hashlib.sha1(json.dumps(pipeline.settings(), sort_keys=True, default=str).encode()).hexdigest()
    return f"{pipeline.primary_model}-{digest[:10]}"


def _history_days(frame: pd.DataFrame, day: pd.Timestamp, timezone: str) -> int:
    before = frame.loc[frame[TIME_COL] < local_day_hours_utc(day, timezone)[0], TIME_COL]
    if before.empty:
        return 0
    return int(before.dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize().nunique())


def _future_rows(frame: pd.DataFrame, zone: str, days: list[pd.Timestamp], timezone: str) -> pd.DataFrame:
    """The zone's rows for `days` with `y` blanked (exogenous values kept) — what forecast_day may see."""
    hours = [h for d in days for h in local_day_hours_utc(d, timezone)]
    grid = pd.DataFrame({ID_COL: zone, TIME_COL: pd.DatetimeIndex(hours).astype("datetime64[ns, UTC]")})
    exog = [c for c in frame.columns if c not in (ID_COL, TIME_COL, TARGET_COL)]
    future = grid.merge(frame[[ID_COL, TIME_COL, *exog]], on=[ID_COL, TIME_COL], how="left")
    return future.assign(**{TARGET_COL: np.nan})


def _forecast_days(
    pipeline: ForecastPipeline,
    history: pd.DataFrame,
    future: pd.DataFrame,
    days: list[pd.Timestamp],
    calibration_days: int,
) -> pd.DataFrame:
    """Primary-model rows for every day of `days` (see `forecast_zone` for how later days are made)."""
    frame = pd.concat(
        [
            history,
            future[future[TIME_COL] < local_day_hours_utc(days[0], pipeline.timezone)[-1] + pd.Timedelta(hours=1)],
        ],
        ignore_index=True,
    )
    first = pipeline.forecast_day(frame, days[0], calibration_days=calibration_days)
    first = first[first["model"] == pipeline.primary_model].reset_index(drop=True)
    out = [first]
    if len(days) == 1:
        return first
    # Interval widths of day 1 per local clock slot, re-centred on each later day's point forecast.
    slots = slot_of_hours(pd.DatetimeIndex(first[TIME_COL]), pipeline.timezone)
    offsets = first[INTERVAL_COLUMNS].sub(first["y_hat"], axis=0).groupby(slots).mean()
    known = history
    for day in days[1:]:
        prev_rows = out[-1]
        filled = (
            future[future[TIME_COL].isin(prev_rows[TIME_COL])]
            .drop(columns=TARGET_COL)
            .merge(prev_rows[[TIME_COL, "y_hat"]].rename(columns={"y_hat": TARGET_COL}), on=TIME_COL, how="left")
        )
        known = pd.concat([known, filled], ignore_index=True)
        hours = local_day_hours_utc(day, pipeline.timezone)
        rows = pipeline.forecast_day(
            pd.concat([known, future[future[TIME_COL].isin(hours)]], ignore_index=True),
            day,
            calibration_days=0,
        )
        rows = rows[rows["model"] == pipeline.primary_model].reset_index(drop=True)
        day_slots = slot_of_hours(pd.DatetimeIndex(rows[TIME_COL]), pipeline.timezone)
        shift = offsets.reindex(day_slots).to_numpy()
        rows[INTERVAL_COLUMNS] = rows["y_hat"].to_numpy()[:, None] + shift
        out.append(rows)
    return pd.concat(out, ignore_index=True)


def forecast_zone(
    frame: pd.DataFrame,
    zone: str,
    target: str,
    day: date | pd.Timestamp | str,
    timezone: str,
    horizon_days: int = 1,
    calibration_days: int = 28,
    champion: Champion | None = None,
    fallback_models: Sequence[str] = ("seasonal_naive",),
    pipeline: ForecastPipeline | None = None,
) -> ZoneForecast:
    """The published forecast of `zone`/`target` for `horizon_days` local days from `day`.

    `frame`: long frame of the zone (history; exogenous columns must also hold the horizon's values). The
    pipeline is `pipeline` if given, else the zone's champion (`ensemble` is the production pipeline; a single
    model only holds the title after beating it, see `ml.forecasting.selection`), else the production pipeline
    (LEAR + DNN). A single-model champion that cannot run hands over to the production pipeline; when that
    cannot run on the available history either (LEAR and the DNN need ~36 complete days before the first
    calibration day) the `fallback_models` pipeline is used. Each skipped pipeline's reason is noted. The
    calibration loop is shortened to the history there is. Days after the first are forecast recursively
    (earlier days' y = their forecast, intervals = day 1's per-slot widths around the new point forecast), so
    their intervals are 1-day-ahead intervals and likely too narrow for longer leads.
    """
    day = local_date(pd.Timestamp(day), timezone)
    days = [day + pd.Timedelta(days=k) for k in range(max(1, horizon_days))]
    rows = zone_frame(frame, zone)
    origin = local_day_hours_utc(day, timezone)[0]
    history = rows[rows[TIME_COL] < origin]
    if history.empty:
        raise ForecastDataError(f"{zone}/{target}: no history before {day.date()}")
    future = _future_rows(rows, zone, days, timezone)
    exog = [c for c in future.columns if c not in (ID_COL, TIME_COL, TARGET_COL)]
    if exog and future[exog].isna().any().any():
        # Exogenous values must exist for every target hour; without them the zone goes univariate.
        history, future = history.drop(columns=exog), future.drop(columns=exog)
    calib = max(0, min(calibration_days, _history_days(history, day, timezone) - 1))
    notes: list[str] = []
    candidates: list[tuple[str, ForecastPipeline]] = []
    if pipeline is not None:
        candidates.append(("given", pipeline))
    elif champion is not None and champion.model != ENSEMBLE_NAME:
        candidates.append(("champion", candidate_pipeline(champion.model, timezone)))
        candidates.append(("production", production_pipeline(timezone=timezone)))
    else:
        candidates.append(("champion" if champion else "production", production_pipeline(timezone=timezone)))
    candidates.append(
        (
            "fallback",
            ForecastPipeline(
                list(fallback_models),
                ensemble="median" if len(fallback_models) > 1 else None,
                timezone=timezone,
            ),
        )
    )
    for source, pipe in candidates:
        try:
            out = _forecast_days(pipe, history, future, days, calib)
        except ForecastDataError as exc:
            notes.append(f"{source} pipeline skipped: {exc}")
            continue
        version = pipeline_version(pipe)
        if source == "champion" and champion is not None and champion.version:
            version = f"{version}@registry-v{champion.version}"
        model = pipe.primary_model
        if source == "fallback" and model == ENSEMBLE_NAME:
            model = f"{pipe.ensemble}({'+'.join(pipe.member_names)})"  # not the production ensemble
        return ZoneForecast(zone, target, out.assign(model=model), model, version, source, notes)
    raise ForecastDataError(f"{zone}/{target}: no pipeline could forecast {day.date()}: {'; '.join(notes)}")


def gold_forecast_rows(forecast: ZoneForecast, run_id: str, delivery_date: date) -> pd.DataFrame:
    """A zone forecast as gold.forecasts rows (GOLD_FORECAST_COLUMNS)."""
    rows = forecast.rows.rename(columns={ID_COL: "zone", TIME_COL: "ts_utc"})
    rows = rows.assign(
        target=forecast.target,
        model=forecast.model,
        model_version=forecast.model_version,
        run_id=run_id,
        delivery_date=delivery_date,
    )
    return rows[GOLD_FORECAST_COLUMNS].reset_index(drop=True)


def interval_coverage(forecasts: pd.DataFrame, actuals: pd.DataFrame) -> dict[str, float]:
    """MAE, coverage80/95 and n of forecast rows (unique_id, ds, y_hat, intervals) against actual `y`."""
    both = forecasts.merge(actuals[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="inner")
    both = both.dropna(subset=[TARGET_COL, "y_hat"])
    if both.empty:
        return {"n": 0.0}
    y = both[TARGET_COL].to_numpy(float)
    out = {"n": float(len(both)), "mae": float(np.mean(np.abs(y - both["y_hat"].to_numpy(float))))}
    for nominal, lo, hi in ((80, "lo80", "hi80"), (95, "lo95", "hi95")):
        ok = both[lo].notna() & both[hi].notna()
        if ok.any():
            inside = (y[ok] >= both.loc[ok, lo].to_numpy(float)) & (y[ok] <= both.loc[ok, hi].to_numpy(float))
            out[f"coverage{nominal}"] = float(np.mean(inside))
    return out


# --- every zone and target of a delivery day ------------------------------------------------------------


@dataclass
class DeliveryDayForecasts:
    """What `forecast_delivery_day` produced for one delivery day, before anything is written."""

    day: date
    horizon_days: int
    targets: list[str]
    facts: dict[str, pd.DataFrame]  # target -> the long frame read (history and, for load, the horizon)
    published: list[ZoneForecast] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "<zone>/<target>" -> why
    notes: list[str] = field(default_factory=list)  # "<zone>/<target>: <note>", for the run log

    @property
    def end(self) -> pd.Timestamp:
        """End of the UTC window read: wide enough for the horizon of every zone-local day (UTC-12..+14)."""
        return pd.Timestamp(self.day).tz_localize("UTC") + pd.Timedelta(days=self.horizon_days + 1)

    def summary(self) -> pd.DataFrame:
        """One row per published zone and target: model, source, version and hours."""
        return pd.DataFrame(
            [
                {
                    "zone": fc.zone,
                    "target": fc.target,
                    "model": fc.model,
                    "source": fc.source,
                    "version": fc.model_version,
                    "hours": len(fc.rows),
                }
                for fc in self.published
            ]
        )


def check_forecast_request(horizon_hours: int, targets: Sequence[str]) -> None:
    """Raise ValueError for a horizon outside 1..168 hours or an unknown target."""
    if not 1 <= horizon_hours <= MAX_HORIZON_HOURS:
        raise ValueError(f"horizon_hours must be within 1..{MAX_HORIZON_HOURS}, got {horizon_hours}")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")


def price_rows_with_load(
    prices: pd.DataFrame,
    load: pd.DataFrame,
    load_forecast: pd.DataFrame | None,
    zone: str,
    origin: pd.Timestamp,
) -> pd.DataFrame:
    """Price rows plus the `load` feature: actual load in the history, the load forecast for the horizon."""
    if load_forecast is None:
        return prices
    history = load[(load[ID_COL] == zone) & (load[TIME_COL] < origin)]
    ahead = load_forecast[[ID_COL, TIME_COL, "y_hat"]].rename(columns={"y_hat": TARGET_COL})
    merged = with_load_feature(prices, pd.concat([history, ahead], ignore_index=True))
    horizon = ahead.assign(**{TARGET_COL: float("nan")}).merge(
        ahead.rename(columns={TARGET_COL: LOAD_FEATURE}), on=[ID_COL, TIME_COL]
    )
    if merged[LOAD_FEATURE].isna().all():
        return prices
    return pd.concat([merged, horizon], ignore_index=True)


def forecast_delivery_day(
    conn: psycopg.Connection,
    day: date,
    *,
    horizon_hours: int = 24,
    calibration_days: int = 28,
    history_days: int = 182,
    targets: Sequence[str] = ("load", "price"),
    fallback_models: Sequence[str] = ("seasonal_naive",),
    use_champions: bool = True,
    zones: Sequence[str] | None = None,
) -> DeliveryDayForecasts:
    """Forecast every zone with public facts (or `zones`) for each target, load first (it feeds price).

    Each zone is cut at its own local midnight of `day`; a zone that cannot be forecast is recorded in
    `skipped` rather than failing the day. Raises MissingFactsError when a fact table is missing.
    """
    horizon_days = math.ceil(horizon_hours / 24)
    day_ts = pd.Timestamp(day)
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=history_days + 1)
    run = DeliveryDayForecasts(day, horizon_days, list(targets), facts={})
    run.facts = {t: fact_frame(conn, t, start, run.end, zones) for t in ("price", "load")}
    tzs = zone_timezones(conn)
    chosen = champions(conn) if use_champions else {}
    load_forecasts: dict[str, pd.DataFrame] = {}
    for target in sorted(targets, key=lambda t: t != "load"):
        frame = run.facts[target]
        for zone in sorted(frame[ID_COL].unique()):
            tz = tzs.get(zone)
            if tz is None:
                run.skipped[f"{zone}/{target}"] = "zone missing from silver.ref__zones"
                continue
            origin = local_day_hours_utc(day_ts, tz)[0]
            zone_rows = frame[(frame[ID_COL] == zone) & (frame[TIME_COL] < origin)]
            if target == "price":
                zone_rows = price_rows_with_load(
                    zone_rows, run.facts["load"], load_forecasts.get(zone), zone, origin
                )
            try:
                fc = forecast_zone(
                    zone_rows,
                    zone,
                    target,
                    day_ts,
                    tz,
                    horizon_days=horizon_days,
                    calibration_days=calibration_days,
                    champion=chosen.get((zone, target)),
                    fallback_models=fallback_models,
                )
            except ForecastDataError as exc:
                run.skipped[f"{zone}/{target}"] = str(exc)
                continue
            run.notes.extend(f"{zone}/{target}: {note}" for note in fc.notes)
            run.published.append(fc)
            if target == "load":
                load_forecasts[zone] = fc.rows
    return run


def publish_forecasts(conn: psycopg.Connection, run: DeliveryDayForecasts, run_id: str) -> int:
    """Replace each published zone and target's rows of the day in gold.forecasts; rows written."""
    return sum(
        replace_forecasts(conn, run.day, fc.zone, fc.target, gold_forecast_rows(fc, run_id, run.day))
        for fc in run.published
    )


def recent_published(conn: psycopg.Connection, run: DeliveryDayForecasts) -> dict[str, pd.DataFrame]:
    """target -> the published forecasts of the week before the day through its horizon (for evaluation)."""
    start = pd.Timestamp(run.day).tz_localize("UTC") - pd.Timedelta(days=8)
    return {t: stored_forecasts(conn, t, start, run.end) for t in run.targets}


def coverage_and_plots(
    recent: dict[str, pd.DataFrame], facts: dict[str, pd.DataFrame], folder: Path
) -> tuple[pd.DataFrame, list[str]]:
    """Coverage on the latest day with both a published forecast and actuals, and one PNG per zone/target."""
    folder.mkdir(parents=True, exist_ok=True)
    records, plots = [], []
    for target, stored in recent.items():
        if stored.empty:
            continue
        actual = facts[target]
        for zone, rows in stored.groupby(ID_COL, sort=True):
            known = rows.merge(actual[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="inner")
            if not known.empty:
                last = known["delivery_date"].max()
                stats = interval_coverage(rows[rows["delivery_date"] == last], actual)
                records.append({"zone": zone, "target": target, "delivery_date": str(last), **stats})
            plot_rows = rows.merge(actual[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="left")
            path = folder / f"forecast_{target}_{zone}.png"
            forecast_plot_png(plot_rows.assign(model="published"), str(zone), "published", path, last_days=8)
            plots.append(str(path))
    return pd.DataFrame(records), plots
