"""Warehouse side of forecasting: read gold facts into long frames, run the daily per-zone forecast, and
write forecasts, anomalies, backtests and model selections.

What belongs here: the SQL the ML assets need (plain psycopg 3 connections in, pandas out) and the small
amount of orchestration-free logic around the library calls that only makes sense against the warehouse —
which pipeline a zone gets (its champion from `ml.forecasting.selection`, the production LEAR + DNN
ensemble when none was selected, or a fallback when the history is too short), load
forecasts feeding price forecasts as the exogenous `load` column, and multi-day horizons. No Dagster here
(assets/ml.py is the thin wrapper).

Sources: public rows (`org_id IS NULL`) of `gold.fct_prices_hourly` (`price_avg`; day-ahead market `DA`
preferred, else the zone's first market) and `gold.fct_load_hourly` (`load_mw_avg`, or `load_mw`).
Writes are idempotent per partition: delete the partition's rows, then insert, in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from infra.db import db_value, insert_frame
from infra.signals import bump_table_version
from ml.forecasting.data import (
    ID_COL,
    TARGET_COL,
    TIME_COL,
    ForecastDataError,
    local_date,
    local_day_hours_utc,
    slot_of_hours,
)
from ml.forecasting.pipeline import ENSEMBLE_NAME, ForecastPipeline, production_pipeline
from ml.forecasting.selection import candidate_pipeline

TARGETS = ("price", "load")
LOAD_FEATURE = "load"
# target -> (fact table, value columns in order of preference); dbt names the load column load_mw_avg.
FACT_SOURCES = {
    "price": ("gold.fct_prices_hourly", ("price_avg",)),
    "load": ("gold.fct_load_hourly", ("load_mw_avg", "load_mw")),
}
GOLD_FORECAST_COLUMNS = [
    "zone",
    "ts_utc",
    "target",
    "model",
    "model_version",
    "run_id",
    "y_hat",
    "q10",
    "q50",
    "q90",
    "lo80",
    "hi80",
    "lo95",
    "hi95",
    "delivery_date",
]
INTERVAL_COLUMNS = ["q10", "q50", "q90", "lo80", "hi80", "lo95", "hi95"]
# A zone's load history must cover this share of its price hours to be used as a price feature.
MIN_LOAD_COVERAGE = 0.9


class MissingFactsError(LookupError):
    """A gold fact table the ML assets read does not exist (dbt has not built it yet)."""


# --- reads ----------------------------------------------------------------------------------------------


def table_columns(conn: psycopg.Connection, qualified: str) -> set[str]:
    """Column names of `schema.table` (empty when the table does not exist)."""
    schema, name = qualified.split(".")
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, name),
    ).fetchall()
    return {r[0] for r in rows}


def zone_timezones(conn: psycopg.Connection) -> dict[str, str]:
    """zone -> IANA timezone from silver.ref__zones."""
    return dict(conn.execute("SELECT zone, timezone FROM silver.ref__zones").fetchall())


def fact_frame(
    conn: psycopg.Connection,
    target: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Long frame (unique_id = zone, ds, y) of the public hourly fact of `target` in [start, end).

    Prices: the zone's `DA` market when it has one, otherwise its first market alphabetically (one market per
    zone, so a zone never mixes day-ahead and real-time prices). Raises MissingFactsError without the table.
    """
    table, candidates = FACT_SOURCES[target]
    columns = table_columns(conn, table)
    value = next((c for c in candidates if c in columns), None)
    if value is None:
        raise MissingFactsError(
            f"{table} does not exist or lacks {' / '.join(candidates)}: materialize the gold dbt models first"
        )
    where = [
        sql.SQL("ts_utc >= %s"),
        sql.SQL("ts_utc < %s"),
        sql.SQL("{v} IS NOT NULL").format(v=sql.Identifier(value)),
    ]
    params: list[Any] = [pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()]
    if "org_id" in columns:
        where.append(sql.SQL("org_id IS NULL"))  # public market data only, never an organization's upload
    if zones is not None:
        where.append(sql.SQL("zone = ANY(%s)"))
        params.append(list(zones))
    market = sql.Identifier("market") if "market" in columns else sql.Literal("")
    query = sql.SQL("SELECT zone, ts_utc, {m}, avg({v}) FROM {t} WHERE {w} GROUP BY 1, 2, 3").format(
        m=market, v=sql.Identifier(value), t=sql.Identifier(*table.split(".")), w=sql.SQL(" AND ").join(where)
    )
    rows = conn.execute(query, params).fetchall()
    frame = pd.DataFrame(rows, columns=[ID_COL, TIME_COL, "market", TARGET_COL])
    if frame.empty:
        return pd.DataFrame(
            {
                ID_COL: pd.Series(dtype=str),
                TIME_COL: pd.Series(dtype="datetime64[ns, UTC]"),
                TARGET_COL: pd.Series(dtype=float),
            }
        )
    chosen = frame.groupby(ID_COL)["market"].agg(lambda m: "DA" if "DA" in set(m) else sorted(set(m))[0])
    frame = frame[frame["market"] == frame[ID_COL].map(chosen)]
    frame = frame.assign(
        **{
            TIME_COL: pd.to_datetime(frame[TIME_COL], utc=True).astype("datetime64[ns, UTC]"),
            TARGET_COL: frame[TARGET_COL].astype(float),
        }
    )
    return frame[[ID_COL, TIME_COL, TARGET_COL]].sort_values([ID_COL, TIME_COL]).reset_index(drop=True)


def latest_fact_time(conn: psycopg.Connection, target: str = "price") -> pd.Timestamp | None:
    """The newest public `ts_utc` of the target's fact table (None when empty or absent)."""
    table, _ = FACT_SOURCES[target]
    columns = table_columns(conn, table)
    if not columns:
        return None
    where = sql.SQL(" WHERE org_id IS NULL") if "org_id" in columns else sql.SQL("")
    row = conn.execute(
        sql.SQL("SELECT max(ts_utc) FROM {t}{w}").format(t=sql.Identifier(*table.split(".")), w=where)
    ).fetchone()
    return pd.Timestamp(row[0]).tz_convert("UTC") if row and row[0] is not None else None


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


def stored_forecasts(
    conn: psycopg.Connection,
    target: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The published forecast per (zone, hour) in [start, end): the newest run's row, in forecast-frame form.

    Columns unique_id, ds, model, y_hat, intervals, run_id, delivery_date. Empty if gold.forecasts is absent.
    """
    cols = ["unique_id", "ds", "model", "y_hat", *INTERVAL_COLUMNS, "run_id", "delivery_date"]
    if not table_columns(conn, "gold.forecasts"):
        return pd.DataFrame(columns=cols)
    zone_filter = sql.SQL(" AND zone = ANY(%s)") if zones is not None else sql.SQL("")
    params: list[Any] = [target, pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()]
    if zones is not None:
        params.append(list(zones))
    rows = conn.execute(
        sql.SQL(
            """SELECT DISTINCT ON (zone, ts_utc) zone, ts_utc, model, y_hat, q10, q50, q90, lo80, hi80, lo95,
                      hi95, run_id, delivery_date
               FROM gold.forecasts WHERE target = %s AND ts_utc >= %s AND ts_utc < %s{z}
               ORDER BY zone, ts_utc, created_at DESC, run_id DESC"""
        ).format(z=zone_filter),
        params,
    ).fetchall()
    frame = pd.DataFrame(rows, columns=cols)
    if not frame.empty:
        frame[TIME_COL] = pd.to_datetime(frame[TIME_COL], utc=True).astype("datetime64[ns, UTC]")
        for c in ["y_hat", *INTERVAL_COLUMNS]:
            frame[c] = frame[c].astype(float)
    return frame


@dataclass(frozen=True)
class Champion:
    """The model a backtest selected for a zone and target."""

    model: str
    version: str | None
    backtest_run_id: str


def champions(conn: psycopg.Connection) -> dict[tuple[str, str], Champion]:
    """(zone, target) -> the newest selection in ml.model_selection (empty when the table is absent)."""
    if not table_columns(conn, "ml.model_selection"):
        return {}
    rows = conn.execute(
        """SELECT DISTINCT ON (zone, target) zone, target, model, registry_version, backtest_run_id
           FROM ml.model_selection ORDER BY zone, target, selected_at DESC"""
    ).fetchall()
    return {(z, t): Champion(m, v, r) for z, t, m, v, r in rows}


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


# --- writes ---------------------------------------------------------------------------------------------


def replace_forecasts(conn: psycopg.Connection, delivery_date: date, zone: str, target: str, rows: pd.DataFrame) -> int:
    """Replace the partition's rows of one zone and target in gold.forecasts (caller's transaction).

    The delivery date's version is bumped in the same transaction, so the API never serves the old rows.
    """
    conn.execute(
        "DELETE FROM gold.forecasts WHERE delivery_date = %s AND zone = %s AND target = %s",
        (delivery_date, zone, target),
    )
    written = insert_frame(conn, "gold.forecasts", rows[GOLD_FORECAST_COLUMNS])
    bump_table_version(conn, "gold.forecasts", delivery_date)
    return written


ANOMALY_GOLD_COLUMNS = [
    "zone",
    "ts_utc",
    "target",
    "kind",
    "score",
    "value",
    "expected",
    "method",
    "market_date",
]


def replace_anomalies(conn: psycopg.Connection, market_date: date, targets: Sequence[str], rows: pd.DataFrame) -> int:
    """Replace the day's anomalies of `targets` (rows in ANOMALY_GOLD_COLUMNS; caller's transaction), bumping
    the market date's version of gold.anomalies in the same transaction."""
    conn.execute("DELETE FROM gold.anomalies WHERE market_date = %s AND target = ANY(%s)", (market_date, list(targets)))
    written = insert_frame(conn, "gold.anomalies", rows[ANOMALY_GOLD_COLUMNS])
    bump_table_version(conn, "gold.anomalies", market_date)
    return written


def insert_backtest(
    conn: psycopg.Connection,
    run_id: str,
    zone: str,
    target: str,
    window: tuple[date, date],
    models: Sequence[str],
    metrics: dict[str, dict[str, float]],
    mlflow_run_id: str | None,
    wall_seconds: float,
) -> None:
    """One ml.backtests row (replacing the same run/zone/target, so a retried run does not duplicate)."""
    conn.execute(
        """INSERT INTO ml.backtests (run_id, zone, target, window_start, window_end, models, metrics,
                                     mlflow_run_id, wall_seconds)
           VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)
           ON CONFLICT (run_id, zone, target) DO UPDATE SET window_start = EXCLUDED.window_start,
               window_end = EXCLUDED.window_end, models = EXCLUDED.models, metrics = EXCLUDED.metrics,
               mlflow_run_id = EXCLUDED.mlflow_run_id, wall_seconds = EXCLUDED.wall_seconds""",
        (
            run_id,
            zone,
            target,
            window[0],
            window[1],
            list(models),
            json.dumps(_json_safe(metrics)),
            mlflow_run_id,
            wall_seconds,
        ),
    )


def insert_model_selection(
    conn: psycopg.Connection,
    zone: str,
    target: str,
    model: str,
    backtest_run_id: str,
    metric: str,
    metric_value: float | None,
    mlflow_run_id: str | None,
    registry_version: str | None,
) -> None:
    """Record the champion of a zone and target (the newest row is the one the forecasts asset uses)."""
    conn.execute(
        """INSERT INTO ml.model_selection (zone, target, model, backtest_run_id, metric, metric_value,
                                           mlflow_run_id, registry_version)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            zone,
            target,
            model,
            backtest_run_id,
            metric,
            db_value(metric_value),
            mlflow_run_id,
            registry_version,
        ),
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
