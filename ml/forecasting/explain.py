"""Explanations of day-ahead forecasts: per forecast hour, the contribution of each input.

What belongs here: attributing a LEAR or DNN forecast of one local day to its inputs (the LEAR feature row:
prices of d-1, d-2, d-3, d-7, each exogenous variable at d, d-1, d-7, day-of-week dummies), the day loop the
`ml/forecast_explanations` asset runs, and the plot stored with its MLflow run. No Dagster here.

LEAR (exact). Per calibration window w and hour h, LEAR is linear in the scaled inputs:
z_wh = b_wh + sum_i c_whi * x_wi (x = asinh of the median/MAD-scaled feature, dummies as 0/1), and the price is
f_w(z) = m_w + s_w * sinh(z). The contribution of input i is its term c_whi * x_wi carried through f_w
exactly: phi_whi = c_whi * x_wi * (f_w(z_wh) - f_w(b_wh)) / (z_wh - b_wh) (the derivative f_w'(b_wh) when
z_wh = b_wh; this is also the integrated gradient along the straight path, exact because z is linear). So for
every window sum_i phi_whi + f_w(b_wh) = f_w(z_wh), and averaged over windows, as LEAR averages its forecast,
the baseline (`(baseline)`, the forecast with every input at its median) plus the contributions is LEAR's
forecast to the last digit. `coefficient x feature` in the model's own (asinh) space is kept as
`linear_term` for readers who want the raw linear decomposition.

DNN (integrated gradients). For each member network and hour, IG from the all-median input (zero in the
scaled space) to the day's input with `IG_STEPS` Riemann steps on the price output (the member's inverse
scaling included), averaged over members like the forecast. Completeness holds up to the step error; the
residual is reported as `(ig_residual)` so the rows of an hour still sum to the forecast.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.forecasting.data import ID_COL, TIME_COL, exogenous_columns, local_day_hours_utc, slot_of_hours
from ml.forecasting.models import DNN, LEAR, target_day_features

BASELINE = "(baseline)"
IG_RESIDUAL = "(ig_residual)"
IG_STEPS = 64
LAGS = (1, 2, 3, 7)
EXOG_LAGS = (0, 1, 7)
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def feature_names(exog: list[str]) -> list[str]:
    """Names of the LEAR feature row's columns, in order (e.g. `price_d-1_h07`, `load_d_h18`, `dow_mon`)."""
    names = [f"price_d-{k}_h{h:02d}" for k in LAGS for h in range(24)]
    for x in exog:
        names += [f"{x}_d{'' if k == 0 else f'-{k}'}_h{h:02d}" for k in EXOG_LAGS for h in range(24)]
    return names + [f"dow_{d}" for d in DAY_NAMES]


def feature_group(name: str) -> str:
    """The group of a feature name: `price_d-1`, `load_d`, `day_of_week`, or a special row's own name."""
    if name.startswith("dow_"):
        return "day_of_week"
    if name.startswith("("):
        return name
    return name.rsplit("_h", 1)[0]


@dataclass
class DayExplanation:
    """Contributions of one model's forecast of one local day: `contributions` hours x features (price
    units), `baseline` per hour, `forecast` per hour (what the model predicted), and the inputs."""

    model: str
    method: str
    hours: pd.DatetimeIndex  # UTC start of each forecast hour of the day
    features: list[str]
    feature_values: np.ndarray  # the raw feature row (p)
    contributions: np.ndarray  # hours x p
    baseline: np.ndarray  # hours
    forecast: np.ndarray  # hours
    residual: np.ndarray | None = None  # hours (integrated gradients' step error)
    linear_terms: np.ndarray | None = field(default=None, repr=False)  # LEAR: slots x p, coefficient x x

    def long(self) -> pd.DataFrame:
        """One row per hour and feature with a non-zero contribution, plus the baseline (and residual)."""
        rows = []
        for i, ts in enumerate(self.hours):
            nz = np.flatnonzero(self.contributions[i])
            for j in nz:
                rows.append((ts, self.features[j], float(self.feature_values[j]), float(self.contributions[i, j])))
            rows.append((ts, BASELINE, None, float(self.baseline[i])))
            if self.residual is not None:
                rows.append((ts, IG_RESIDUAL, None, float(self.residual[i])))
        frame = pd.DataFrame(rows, columns=["ts_utc", "feature", "feature_value", "contribution"])
        forecast = dict(zip(self.hours, self.forecast, strict=True))
        return frame.assign(y_hat=frame["ts_utc"].map(forecast), model=self.model, method=self.method)


def _future_of(frame: pd.DataFrame, uid: str, day: pd.Timestamp, timezone: str) -> pd.DataFrame:
    hours = local_day_hours_utc(day, timezone)
    fut = frame[(frame[ID_COL] == uid) & frame[TIME_COL].isin(hours)]
    if len(fut) != len(hours):
        grid = pd.DataFrame({ID_COL: uid, TIME_COL: pd.DatetimeIndex(hours).astype("datetime64[ns, UTC]")})
        fut = grid.merge(fut.drop(columns=[ID_COL]), on=TIME_COL, how="left")
    return fut.reset_index(drop=True)


def explain_lear(
    model: LEAR, history: pd.DataFrame, frame: pd.DataFrame, uid: str, day: pd.Timestamp, timezone: str
) -> DayExplanation:
    """Exact contributions of a fitted LEAR's forecast of local `day` (see the module docstring)."""
    fut = _future_of(frame, uid, day, timezone)
    row = target_day_features(history, fut, timezone, model.name)
    fits = list(model._fits[str(uid)].values())
    contrib = np.zeros((24, row.shape[1]))
    linear = np.zeros((24, row.shape[1]))
    base = np.zeros(24)
    pred = np.zeros(24)
    for fit in fits:
        x = fit._transform_x(row)[0]
        terms = fit.coef * x[None, :]  # 24 x p
        z = terms.sum(axis=1) + fit.intercept
        f_z = fit.y_med + fit.y_mad * np.sinh(z)
        f_b = fit.y_med + fit.y_mad * np.sinh(fit.intercept)
        dz = z - fit.intercept
        slope = np.where(
            np.abs(dz) > 1e-12, (f_z - f_b) / np.where(np.abs(dz) > 1e-12, dz, 1.0), fit.y_mad * np.cosh(fit.intercept)
        )
        contrib += terms * slope[:, None]
        linear += terms
        base += f_b
        pred += f_z
    n = len(fits)
    slots = slot_of_hours(pd.DatetimeIndex(fut[TIME_COL]), timezone)
    return DayExplanation(
        model=model.name,
        method="exact_linear",
        hours=pd.DatetimeIndex(fut[TIME_COL]),
        features=feature_names(exogenous_columns(history)),
        feature_values=row[0],
        contributions=(contrib / n)[slots],
        baseline=(base / n)[slots],
        forecast=(pred / n)[slots],
        linear_terms=linear / n,
    )


def explain_dnn(
    model: DNN,
    history: pd.DataFrame,
    frame: pd.DataFrame,
    uid: str,
    day: pd.Timestamp,
    timezone: str,
    steps: int = IG_STEPS,
) -> DayExplanation:
    """Integrated-gradients contributions of a fitted DNN's forecast of local `day` (module docstring)."""
    import torch

    fut = _future_of(frame, uid, day, timezone)
    row = target_day_features(history, fut, timezone, model.name)
    members = model._members[str(uid)]
    p = row.shape[1]
    contrib = np.zeros((24, p))
    base = np.zeros(24)
    pred = np.zeros(24)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    for design, net in members:
        x = torch.from_numpy(design.x(row))[0]
        y_med = torch.tensor(design.y_med, dtype=torch.float32)
        y_mad = torch.tensor(design.y_mad, dtype=torch.float32)

        def price(inp: Any) -> Any:
            return y_med + y_mad * torch.sinh(net(inp))  # noqa: B023 - evaluated inside this iteration

        path = (alphas[:, None] * x[None, :]).requires_grad_(True)
        out = price(path)  # steps x 24
        grads = []
        for h in range(24):
            (g,) = torch.autograd.grad(out[:, h].sum(), path, retain_graph=h < 23)
            grads.append(g.mean(dim=0))
        with torch.no_grad():
            contrib += (torch.stack(grads) * x[None, :]).numpy()
            base += price(torch.zeros(1, p))[0].numpy()
            pred += price(x[None, :])[0].numpy()
    n = len(members)
    contrib, base, pred = contrib / n, base / n, pred / n
    residual = pred - base - contrib.sum(axis=1)
    slots = slot_of_hours(pd.DatetimeIndex(fut[TIME_COL]), timezone)
    return DayExplanation(
        model=model.name,
        method="integrated_gradients",
        hours=pd.DatetimeIndex(fut[TIME_COL]),
        features=feature_names(exogenous_columns(history)),
        feature_values=row[0],
        contributions=contrib[slots],
        baseline=base[slots],
        forecast=pred[slots],
        residual=residual[slots],
    )


def explanation_png(explanations: list[DayExplanation], zone: str, path: Path, top: int = 8) -> Path:
    """Stacked bars per forecast hour of the `top` feature groups' contributions (one panel per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(explanations), 1, figsize=(11, 3.6 * len(explanations)), squeeze=False)
    for ax, exp in zip(axes[:, 0], explanations, strict=True):
        groups = pd.DataFrame(exp.contributions, columns=exp.features).T.groupby(feature_group).sum().T
        order = groups.abs().sum().sort_values(ascending=False).index
        shown, rest = list(order[:top]), list(order[top:])
        if rest:
            groups["other inputs"] = groups[rest].sum(axis=1)
            shown.append("other inputs")
        hours = np.arange(len(exp.hours))
        pos, neg = np.zeros(len(hours)), np.zeros(len(hours))
        for name in shown:
            vals = groups[name].to_numpy()
            ax.bar(hours, np.where(vals > 0, vals, 0), bottom=pos, label=name)
            ax.bar(hours, np.where(vals < 0, vals, 0), bottom=neg, color=ax.patches[-1].get_facecolor())
            pos += np.where(vals > 0, vals, 0)
            neg += np.where(vals < 0, vals, 0)
        ax.plot(hours, exp.forecast - exp.baseline, color="black", marker=".", label="forecast - baseline")
        ax.set_title(f"{zone} {exp.model} ({exp.method}): contribution per input group, by forecast hour")
        ax.set_xlabel("hour of the delivery day (local)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def log_explanations_to_mlflow(
    explanations: dict[str, list[DayExplanation]], tracking_uri: str, day: str, run_name: str
) -> str:
    """One MLflow run per explained day: a PNG per zone and the contributions as CSV."""
    from ml.forecasting.tracking import _client, experiment_id_for

    client = _client(tracking_uri)
    run = client.create_run(experiment_id_for(tracking_uri, "optibid-forecast-explanations"), run_name=run_name)
    run_id = run.info.run_id
    try:
        client.log_param(run_id, "delivery_date", day)
        with tempfile.TemporaryDirectory() as tmp:
            for zone, exps in explanations.items():
                client.log_artifact(run_id, str(explanation_png(exps, zone, Path(tmp) / f"explanation_{zone}.png")))
                table = pd.concat([e.long() for e in exps], ignore_index=True)
                csv = Path(tmp) / f"contributions_{zone}.csv"
                table.to_csv(csv, index=False)
                client.log_artifact(run_id, str(csv))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


# --- the day loop of the explanations asset --------------------------------------------------------------


@dataclass
class ExplainedDay:
    day: Any
    explanations: dict[str, list[DayExplanation]] = field(default_factory=dict)  # zone -> per model
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def explain_delivery_day(
    conn: Any,
    day: Any,
    run_id: str,
    *,
    history_days: int = 182,
    dnn_members: int = 4,
    dnn_max_epochs: int = 400,
    zones: list[str] | None = None,
) -> ExplainedDay:
    """LEAR (production windows, shrunk to the history) and DNN explanations of every zone's price forecast of
    `day`, from the same inputs the daily forecast used (history before the zone's local midnight, and the
    published load forecast of the day as the `load` feature where one exists); replaces the day's rows in
    ml.forecast_explanations (caller's transaction). The DNN is the production architecture retrained here
    with `dnn_members` members (the published ensemble's members are not kept after the daily run)."""
    from ml.forecasting.daily import price_rows_with_load, zone_frame
    from ml.forecasting.data import ForecastDataError
    from ml.forecasting.pipeline import PRODUCTION_WINDOWS
    from ml.forecasting.warehouse import replace_explanations
    from ml.warehouse_reads import fact_frame, forecast_rows_in, zone_timezones

    out = ExplainedDay(day)
    day_ts = pd.Timestamp(day)
    start = day_ts.tz_localize("UTC") - pd.Timedelta(days=history_days + 1)
    end = day_ts.tz_localize("UTC") + pd.Timedelta(days=2)
    prices = fact_frame(conn, "price", start, end, zones)
    load = fact_frame(conn, "load", start, end, zones)
    published = forecast_rows_in(conn, "load", day_ts.tz_localize("UTC") - pd.Timedelta(days=1), end, zones)
    tzs = zone_timezones(conn)
    for zone in sorted(prices[ID_COL].unique()):
        tz = tzs.get(zone)
        if tz is None:
            out.skipped[zone] = "zone missing from silver.ref__zones"
            continue
        origin = local_day_hours_utc(day_ts, tz)[0]
        rows = prices[(prices[ID_COL] == zone) & (prices[TIME_COL] < origin)]
        zone_load = published[
            (published[ID_COL] == zone) & (published["delivery_date"] == day) & (published["role"] == "champion")
        ]
        frame = zone_frame(
            price_rows_with_load(rows, load, zone_load if not zone_load.empty else None, zone, origin), zone
        )
        history = frame[frame[TIME_COL] < origin]
        exps = []
        try:
            lear = LEAR(calibration_windows=PRODUCTION_WINDOWS).fit(history, tz)
            exps.append(explain_lear(lear, history, frame, zone, day_ts, tz))
            dnn = DNN(n_members=dnn_members, max_epochs=dnn_max_epochs).fit(history, tz)
            exps.append(explain_dnn(dnn, history, frame, zone, day_ts, tz))
        except ForecastDataError as exc:
            out.skipped[zone] = str(exc)
            if not exps:
                continue
        table = pd.concat([e.long() for e in exps], ignore_index=True).assign(zone=zone, target="price", run_id=run_id)
        out.written[zone] = replace_explanations(conn, day, zone, "price", table)
        out.explanations[zone] = exps
    return out
