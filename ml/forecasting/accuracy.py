"""Accuracy tracking and champion/challenger: every published and shadow forecast scored once actuals exist,
the Diebold-Mariano test, and the rule that promotes a challenger.

What belongs here: scoring forecast rows against actuals per zone, target, model, role and horizon day
(`score_forecasts`), the day loop the `ml/forecast_accuracy` asset runs (`score_market_day`), the shadow
forecasts of a challenger beside the champion (`shadow_delivery_day`), the multivariate Diebold-Mariano test
as epftoolbox runs it (`diebold_mariano`), the promotion rule (`PromotionRule`, `decide_promotion`), and the
MLflow logging of accuracy over time (`log_accuracy_to_mlflow`). Reads are `ml.warehouse_reads`, writes
`ml.forecasting.warehouse`. No Dagster here.

Horizon day: 1 for hours of the forecast run's delivery day (the day-ahead forecast), 2 for the day after,
and so on (multi-day runs). Roles: `champion` is what gold.forecasts published (whatever model the daily
asset chose); `challenger` is the shadow model in ml.shadow_forecasts, never served as the forecast.

The promotion rule (stated, and recorded with every decision in ml.promotion_decisions): over the last
`days` scored local days on which both champion and challenger have complete day-ahead (horizon day 1)
forecasts, the challenger is promoted if and only if
    1. there are at least `days` such days (fewer: no decision, "not enough days"),
    2. its MAE over those days is lower than the champion's, and
    3. the one-sided multivariate Diebold-Mariano test (daily mean absolute errors; H1: the challenger is
       more accurate) rejects at `alpha` (p < alpha).
A promotion is a new ml.model_selection row naming the challenger, which the daily forecast uses from its
next run on.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from ml.forecasting.daily import forecast_zone, price_rows_with_load
from ml.forecasting.data import ID_COL, TARGET_COL, TIME_COL, ForecastDataError, local_day_hours_utc
from ml.forecasting.selection import candidate_pipeline, model_key
from ml.forecasting.tracking import _client, experiment_id_for
from ml.forecasting.warehouse import (
    insert_model_selection,
    insert_promotion_decision,
    replace_accuracy,
    replace_shadow_forecasts,
)
from ml.warehouse_reads import champions, fact_frame, forecast_rows_in, zone_timezones

ACCURACY_COLUMNS = [
    "zone",
    "target",
    "model",
    "role",
    "horizon_day",
    "scored_date",
    "n_hours",
    "mae",
    "rmse",
    "smape",
    "bias",
]
ACCURACY_EXPERIMENT = "optibid-forecast-accuracy"


# --- scoring --------------------------------------------------------------------------------------------


def score_forecasts(forecasts: pd.DataFrame, actuals: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """Accuracy rows (ACCURACY_COLUMNS but zone/target) of forecast rows against actuals, per local day.

    `forecasts`: unique_id, ds, model, role, y_hat, delivery_date; `actuals`: unique_id, ds, y. Hours without
    an actual are left out; a (model, role, horizon day, day) group with no actual hour gives no row.
    """
    both = forecasts.merge(actuals[[ID_COL, TIME_COL, TARGET_COL]], on=[ID_COL, TIME_COL], how="inner")
    both = both.dropna(subset=[TARGET_COL, "y_hat"])
    if both.empty:
        return pd.DataFrame(
            columns=["model", "role", "horizon_day", "scored_date", "n_hours", "mae", "rmse", "smape", "bias"]
        )
    local_day = pd.to_datetime(both[TIME_COL]).dt.tz_convert(timezone).dt.date
    both = both.assign(
        scored_date=local_day,
        horizon_day=[
            (d - pd.Timestamp(dd).date()).days + 1 for d, dd in zip(local_day, both["delivery_date"], strict=True)
        ],
        err=both["y_hat"].astype(float) - both[TARGET_COL].astype(float),
    )
    both = both[(both["horizon_day"] >= 1) & (both["horizon_day"] <= 7)]
    rows = []
    for (model, role, horizon, day), g in both.groupby(["model", "role", "horizon_day", "scored_date"], sort=True):
        err = g["err"].to_numpy(float)
        y, y_hat = g[TARGET_COL].to_numpy(float), g["y_hat"].to_numpy(float)
        denom = np.abs(y) + np.abs(y_hat)
        smape = float(np.mean(np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)) * 100)
        rows.append(
            {
                "model": model,
                "role": role,
                "horizon_day": int(horizon),
                "scored_date": day,
                "n_hours": len(g),
                "mae": float(np.mean(np.abs(err))),
                "rmse": float(np.sqrt(np.mean(err**2))),
                "smape": smape,
                "bias": float(np.mean(err)),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class ScoredDay:
    """What `score_market_day` scored: the rows written and the zones without anything to score."""

    day: date
    rows: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)


def score_market_day(
    conn: psycopg.Connection, day: date, targets: Sequence[str] = ("price", "load"), zones: Sequence[str] | None = None
) -> ScoredDay:
    """Score every published and shadow forecast of each zone's local `day` that has actuals, and replace the
    day's rows in ml.forecast_accuracy (caller's transaction)."""
    tzs = zone_timezones(conn)
    start = pd.Timestamp(day).tz_localize("UTC") - pd.Timedelta(days=1)
    end = start + pd.Timedelta(days=3)
    out, skipped = [], {}
    for target in targets:
        actuals = fact_frame(conn, target, start, end, zones)
        forecasts = forecast_rows_in(conn, target, start, end, zones)
        for zone in sorted(set(forecasts[ID_COL]) if not forecasts.empty else []):
            tz = tzs.get(zone)
            if tz is None:
                skipped[f"{zone}/{target}"] = "zone missing from silver.ref__zones"
                continue
            hours = local_day_hours_utc(pd.Timestamp(day), tz)
            zone_fc = forecasts[(forecasts[ID_COL] == zone) & forecasts[TIME_COL].isin(hours)]
            scored = score_forecasts(zone_fc, actuals[actuals[ID_COL] == zone], tz)
            scored = scored[scored["scored_date"] == day] if not scored.empty else scored
            if scored.empty:
                skipped[f"{zone}/{target}"] = "no actuals yet for the forecast hours"
                continue
            out.append(scored.assign(zone=zone, target=target))
    rows = pd.concat(out, ignore_index=True)[ACCURACY_COLUMNS] if out else pd.DataFrame(columns=ACCURACY_COLUMNS)
    replace_accuracy(conn, day, list(targets), rows, zones)
    return ScoredDay(day, rows, skipped)


# --- shadow forecasts -----------------------------------------------------------------------------------


@dataclass
class ShadowRun:
    day: date
    challenger: str
    written: dict[str, int] = field(default_factory=dict)  # zone -> rows
    skipped: dict[str, str] = field(default_factory=dict)


def shadow_delivery_day(
    conn: psycopg.Connection,
    day: date,
    challenger: str,
    run_id: str,
    *,
    calibration_days: int = 28,
    history_days: int = 182,
    zones: Sequence[str] | None = None,
) -> ShadowRun:
    """The challenger's day-ahead price forecast of every zone with public facts, into ml.shadow_forecasts.

    The challenger sees exactly what the champion saw: the zone's history and, when the zone has a published
    load forecast for the day, that forecast as the `load` feature. A zone whose current champion already is
    the challenger is skipped (nothing to compare), as is one the challenger cannot forecast (no fallback:
    a shadow is the challenger or nothing).
    """
    run = ShadowRun(day, model_key(challenger))
    day_ts = pd.Timestamp(day)
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=history_days + 1)
    end = day_ts.tz_localize("UTC") + pd.Timedelta(days=2)
    prices = fact_frame(conn, "price", start, end, zones)
    load = fact_frame(conn, "load", start, end, zones)
    load_forecasts = forecast_rows_in(conn, "load", day_ts.tz_localize("UTC") - pd.Timedelta(days=1), end, zones)
    tzs = zone_timezones(conn)
    chosen = champions(conn)
    for zone in sorted(prices[ID_COL].unique()):
        tz = tzs.get(zone)
        if tz is None:
            run.skipped[zone] = "zone missing from silver.ref__zones"
            continue
        champion = chosen.get((zone, "price"))
        if champion is not None and model_key(champion.model) == run.challenger:
            run.skipped[zone] = f"{challenger} is already the champion"
            continue
        origin = local_day_hours_utc(day_ts, tz)[0]
        rows = prices[(prices[ID_COL] == zone) & (prices[TIME_COL] < origin)]
        zone_load = load_forecasts[
            (load_forecasts[ID_COL] == zone)
            & (load_forecasts["delivery_date"] == day)
            & (load_forecasts["role"] == "champion")
        ]
        rows = price_rows_with_load(rows, load, zone_load if not zone_load.empty else None, zone, origin)
        try:
            fc = forecast_zone(
                rows,
                zone,
                "price",
                day_ts,
                tz,
                calibration_days=calibration_days,
                pipeline=candidate_pipeline(challenger, tz),
            )
        except ForecastDataError as exc:
            run.skipped[zone] = str(exc)
            continue
        if fc.source != "given":
            run.skipped[zone] = f"{challenger} could not forecast: {'; '.join(fc.notes)}"
            continue
        out = fc.rows.rename(columns={ID_COL: "zone", TIME_COL: "ts_utc"})
        out = out.assign(
            target="price", model=fc.model, model_version=fc.model_version, run_id=run_id, delivery_date=day
        )
        run.written[zone] = replace_shadow_forecasts(conn, day, zone, "price", out)
    return run


# --- Diebold-Mariano and the promotion rule ------------------------------------------------------------


@dataclass(frozen=True)
class DieboldMariano:
    statistic: float
    p_value: float  # one-sided: H1 = the second forecast is more accurate than the first
    days: int


def diebold_mariano(
    actual: np.ndarray, forecast_1: np.ndarray, forecast_2: np.ndarray, norm: int = 1
) -> DieboldMariano:
    """The multivariate Diebold-Mariano test of epftoolbox (Lago et al. 2021) on days x hours arrays.

    Per day t, d_t = mean_h |e1_th|^norm - mean_h |e2_th|^norm; DM = mean(d) / sqrt(var(d) / N) (population
    variance, no autocorrelation correction: daily loss differentials of day-ahead forecasts); the p-value is
    1 - Phi(DM), small when forecast 2 is significantly more accurate than forecast 1.
    """
    from scipy import stats

    actual, f1, f2 = (np.asarray(a, dtype=float) for a in (actual, forecast_1, forecast_2))
    if actual.ndim != 2 or actual.shape != f1.shape or actual.shape != f2.shape:
        raise ValueError("actual and both forecasts must be days x hours arrays of one shape")
    d = np.mean(np.abs(actual - f1) ** norm, axis=1) - np.mean(np.abs(actual - f2) ** norm, axis=1)
    n = len(d)
    var = float(np.var(d))
    if n < 2 or var == 0:
        stat = math.inf if d.mean() > 0 else -math.inf if d.mean() < 0 else 0.0
    else:
        stat = float(d.mean() / math.sqrt(var / n))
    return DieboldMariano(stat, float(1 - stats.norm.cdf(stat)), n)


@dataclass(frozen=True)
class PromotionRule:
    """Promote the challenger over the last `days` common complete days only if its MAE is lower and the DM
    test rejects at `alpha` (see the module docstring)."""

    days: int = 14
    alpha: float = 0.05
    min_hours: int = 23  # a day counts as complete with this many scored hours for both models

    def describe(self) -> str:
        return (
            f"challenger MAE < champion MAE over the last {self.days} common complete days (day-ahead, >= "
            f"{self.min_hours} h each) and one-sided multivariate Diebold-Mariano p < {self.alpha}"
        )


@dataclass
class PromotionDecision:
    zone: str
    target: str
    champion: str
    challenger: str
    days: int
    champion_mae: float | None
    challenger_mae: float | None
    dm_statistic: float | None
    p_value: float | None
    promoted: bool
    reason: str


def decide_promotion(
    pairs: pd.DataFrame, zone: str, target: str, champion: str, challenger: str, rule: PromotionRule
) -> PromotionDecision:
    """Apply `rule` to `pairs` (scored_date, ds, y, champion, challenger): one row per hour both forecast."""
    complete = pairs.groupby("scored_date").filter(lambda g: len(g) >= rule.min_hours)
    days = sorted(complete["scored_date"].unique())[-rule.days :]
    window = complete[complete["scored_date"].isin(days)]

    def decision(promoted: bool, reason: str, **stats: Any) -> PromotionDecision:
        return PromotionDecision(
            zone,
            target,
            champion,
            challenger,
            len(days),
            promoted=promoted,
            reason=reason,
            **{
                "champion_mae": stats.get("champion_mae"),
                "challenger_mae": stats.get("challenger_mae"),
                "dm_statistic": stats.get("dm_statistic"),
                "p_value": stats.get("p_value"),
            },
        )

    if len(days) < rule.days:
        return decision(False, f"not enough days: {len(days)} common complete days, the rule needs {rule.days}")
    champ_mae = float(np.mean(np.abs(window["champion"] - window["y"])))
    chall_mae = float(np.mean(np.abs(window["challenger"] - window["y"])))
    matrices = [
        np.vstack(
            [g.sort_values("ds")[col].to_numpy(float)[: rule.min_hours] for _, g in window.groupby("scored_date")]
        )
        for col in ("y", "champion", "challenger")
    ]
    dm = diebold_mariano(*matrices)
    stats = {
        "champion_mae": champ_mae,
        "challenger_mae": chall_mae,
        "dm_statistic": dm.statistic,
        "p_value": dm.p_value,
    }
    if chall_mae >= champ_mae:
        return decision(False, f"challenger MAE {chall_mae:.3f} is not below champion MAE {champ_mae:.3f}", **stats)
    if dm.p_value >= rule.alpha:
        return decision(False, f"better MAE but not significant: DM p = {dm.p_value:.4f} >= {rule.alpha}", **stats)
    return decision(True, f"MAE {chall_mae:.3f} < {champ_mae:.3f} and DM p = {dm.p_value:.4g} < {rule.alpha}", **stats)


def champion_challenger_pairs(conn: psycopg.Connection, zone: str, target: str, end: date, days: int) -> pd.DataFrame:
    """Hourly day-ahead champion and challenger forecasts of `zone` with actuals, over the `days` + 7 local
    days up to `end` (scored_date, ds, y, champion, challenger, champion_model, challenger_model)."""
    tz = zone_timezones(conn)[zone]
    start = pd.Timestamp(end - timedelta(days=days + 7)).tz_localize("UTC")
    stop = pd.Timestamp(end + timedelta(days=2)).tz_localize("UTC")
    rows = forecast_rows_in(conn, target, start, stop, [zone])
    actuals = fact_frame(conn, target, start, stop, [zone])
    if rows.empty or actuals.empty:
        return pd.DataFrame(columns=["scored_date", "ds", "y", "champion", "challenger"])
    local = rows[TIME_COL].dt.tz_convert(tz).dt.date
    rows = rows[[d == pd.Timestamp(dd).date() for d, dd in zip(local, rows["delivery_date"], strict=True)]]
    wide = rows.pivot_table(index=TIME_COL, columns="role", values="y_hat", aggfunc="last")
    models = rows.groupby("role")["model"].agg(lambda m: m.iloc[-1])
    if not {"champion", "challenger"} <= set(wide.columns):
        return pd.DataFrame(columns=["scored_date", "ds", "y", "champion", "challenger"])
    wide = wide.dropna(subset=["champion", "challenger"]).reset_index()
    both = wide.merge(actuals[[TIME_COL, TARGET_COL]], on=TIME_COL, how="inner").rename(
        columns={TIME_COL: "ds", TARGET_COL: "y"}
    )
    both["scored_date"] = both["ds"].dt.tz_convert(tz).dt.date
    both = both[both["scored_date"] <= end]
    return both.assign(champion_model=models.get("champion"), challenger_model=models.get("challenger"))


def promote_challengers(
    conn: psycopg.Connection,
    end: date,
    rule: PromotionRule,
    run_id: str,
    zones: Sequence[str] | None = None,
    target: str = "price",
) -> list[PromotionDecision]:
    """Decide every zone with shadow forecasts (caller's transaction): record each decision and, on a
    promotion, make the challenger the zone's champion in ml.model_selection."""
    decisions = []
    for zone in sorted(zones or zone_timezones(conn)):
        pairs = champion_challenger_pairs(conn, zone, target, end, rule.days)
        if pairs.empty:
            continue
        champion, challenger = str(pairs["champion_model"].iloc[0]), str(pairs["challenger_model"].iloc[0])
        decision = decide_promotion(pairs, zone, target, champion, challenger, rule)
        insert_promotion_decision(conn, decision, run_id)
        if decision.promoted:
            insert_model_selection(
                conn, zone, target, model_key(challenger), run_id, "mae", decision.challenger_mae, None, None
            )
        decisions.append(decision)
    return decisions


# --- MLflow ---------------------------------------------------------------------------------------------


def log_accuracy_to_mlflow(history: pd.DataFrame, tracking_uri: str, run_name: str) -> str:
    """One MLflow run holding accuracy over time: metric `mae.<zone>.<target>.<role>.h<horizon>` per scored
    day (step = days since 1970-01-01, so MLflow plots it against time) and a PNG per zone and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = _client(tracking_uri)
    run = client.create_run(experiment_id_for(tracking_uri, ACCURACY_EXPERIMENT), run_name=run_name)
    run_id = run.info.run_id
    try:
        epoch = date(1970, 1, 1)
        for row in history.itertuples(index=False):
            key = f"mae.{row.zone}.{row.target}.{row.role}.h{row.horizon_day}"
            ts = int(pd.Timestamp(row.scored_date).tz_localize("UTC").timestamp() * 1000)
            client.log_metric(run_id, key, float(row.mae), timestamp=ts, step=(row.scored_date - epoch).days)
        with tempfile.TemporaryDirectory() as tmp:
            for (zone, target), g in history.groupby(["zone", "target"]):
                fig, ax = plt.subplots(figsize=(9, 4))
                for (role, model, horizon), line in g.groupby(["role", "model", "horizon_day"]):
                    line = line.sort_values("scored_date")
                    ax.plot(line["scored_date"], line["mae"], marker="o", label=f"{role} {model} day {horizon}")
                ax.set_title(f"{zone} {target}: MAE per scored day")
                ax.set_ylabel("MAE")
                ax.legend(fontsize=7)
                fig.autofmt_xdate()
                path = Path(tmp) / f"accuracy_{zone}_{target}.png"
                fig.savefig(path, dpi=90, bbox_inches="tight")
                plt.close(fig)
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def accuracy_history(
    conn: psycopg.Connection, end: date, days: int, zones: Sequence[str] | None = None
) -> pd.DataFrame:
    """ml.forecast_accuracy rows of the `days` scored days up to `end` (ACCURACY_COLUMNS)."""
    rows = conn.execute(
        f"""SELECT {", ".join(ACCURACY_COLUMNS)} FROM ml.forecast_accuracy
            WHERE scored_date > %s AND scored_date <= %s AND (%s::text[] IS NULL OR zone = ANY(%s))
            ORDER BY zone, target, role, model, horizon_day, scored_date""",
        (
            end - timedelta(days=days),
            end,
            None if zones is None else list(zones),
            None if zones is None else list(zones),
        ),
    ).fetchall()
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def latest_scored_date(conn: psycopg.Connection) -> date | None:
    """The newest scored day in ml.forecast_accuracy (None when nothing was scored)."""
    row = conn.execute("SELECT max(scored_date) FROM ml.forecast_accuracy").fetchone()
    return row[0] if row else None
