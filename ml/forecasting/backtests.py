"""The weekly backtest: every zone and target backtested, its champion selected, logged to MLflow, registered
and stored in ml.backtests / ml.model_selection.

What belongs here: the loop over zones and targets the `ml/backtests` asset runs, around the per-zone rule in
`ml.forecasting.selection` and the MLflow calls in `ml.forecasting.tracking`. Reads go through
`ml.warehouse_reads`, writes through `ml.forecasting.warehouse`; the daily forecast that uses the stored
choice is `ml.forecasting.daily`. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import psycopg

from ml.forecasting.daily import with_load_feature, zone_frame
from ml.forecasting.data import ID_COL, ForecastDataError
from ml.forecasting.selection import (
    SELECTION_METRICS,
    ZoneSelection,
    complete_day_window,
    relabelled,
    select_zone,
)
from ml.forecasting.tracking import log_backtest_run, register_champion
from ml.forecasting.warehouse import insert_backtest, insert_model_selection
from ml.warehouse_reads import MissingFactsError, fact_frame, latest_fact_time, zone_timezones

# Registered-model name prefix per target (price keeps the library default).
REGISTRY_PREFIX = {"price": "optibid-forecast", "load": "optibid-forecast-load"}


@dataclass
class BacktestInputs:
    """The public facts of the backtest's history window, per target, and the zones' timezones."""

    facts: dict[str, pd.DataFrame]
    load: pd.DataFrame  # the load facts, which price backtests take as a feature
    timezones: dict[str, str]


@dataclass
class SelectedChampion:
    """One zone and target's selection, with its MLflow run and registered version."""

    target: str
    selection: ZoneSelection
    mlflow_run_id: str
    registry_version: str


@dataclass
class BacktestRun:
    """Everything the weekly backtest decided, before it is stored."""

    selections: list[SelectedChampion] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per zone, target and model
    skipped: dict[str, str] = field(default_factory=dict)  # "<zone>/<target>" -> why
    notes: list[str] = field(default_factory=list)  # "<zone>/<target>: <note>", for the run log


def check_selection_metric(metric: str) -> None:
    """Raise ValueError unless `metric` is one of SELECTION_METRICS."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection_metric must be one of {SELECTION_METRICS}, got {metric!r}")


def read_backtest_inputs(
    conn: psycopg.Connection, history_days: int, targets: Sequence[str], zones: Sequence[str] | None
) -> BacktestInputs:
    """The last `history_days` of public facts up to the newest price hour; MissingFactsError without any."""
    latest = latest_fact_time(conn, "price")
    if latest is None:
        raise MissingFactsError("gold.fct_prices_hourly holds no public prices: nothing to backtest")
    start = latest - pd.Timedelta(days=history_days)
    end = latest + pd.Timedelta(hours=1)
    facts = {t: fact_frame(conn, t, start, end, zones) for t in targets}
    load = facts["load"] if "load" in facts else fact_frame(conn, "load", start, end, zones)
    return BacktestInputs(facts, load, zone_timezones(conn))


def backtest_zones(
    inputs: BacktestInputs,
    *,
    targets: Sequence[str],
    days: int,
    warmup_days: int,
    models: Sequence[str],
    selection_metric: str,
    tracking_uri: str,
    run_id: str,
) -> BacktestRun:
    """Backtest every zone of each target, select its champion, log the run to MLflow and register it.

    `run_id` names the MLflow runs (`backtest-<zone>-<first 8 characters>`). A zone without a complete local
    day or whose candidates cannot run is recorded in `skipped`.
    """
    run = BacktestRun()
    for target in targets:
        facts = inputs.facts[target]
        frame = facts if target == "load" else with_load_feature(facts, inputs.load)
        for zone in sorted(frame[ID_COL].unique()):
            tz = inputs.timezones.get(zone, "UTC")
            rows = zone_frame(frame, zone)
            window = complete_day_window(rows, tz, days)
            if window is None:
                run.skipped[f"{zone}/{target}"] = "no complete local day"
                continue
            try:
                chosen = select_zone(rows, zone, *window, tz, models, selection_metric, warmup_days)
            except (ForecastDataError, ValueError) as exc:
                run.skipped[f"{zone}/{target}"] = str(exc)
                continue
            run.notes.extend(f"{zone}/{target}: {note}" for note in chosen.notes)
            label = zone if target == "price" else f"{zone}-load"
            mlflow_run_id = log_backtest_run(
                chosen.result if target == "price" else relabelled(chosen.result, label),
                tracking_uri,
                zone=label,
                pipeline=chosen.pipeline,
                run_name=f"backtest-{label}-{run_id[:8]}",
            )
            version = register_champion(mlflow_run_id, zone, tracking_uri, prefix=REGISTRY_PREFIX[target])
            run.selections.append(SelectedChampion(target, chosen, mlflow_run_id, version))
            for model, metrics in chosen.metrics_by_model().items():
                run.metrics.append(
                    {
                        "zone": zone,
                        "target": target,
                        "model": model,
                        **{k: metrics.get(k) for k in ("mae", "rmae", "coverage80", "coverage95")},
                        "champion": model == chosen.champion,
                    }
                )
    return run


def store_selections(conn: psycopg.Connection, run_id: str, selections: Sequence[SelectedChampion]) -> None:
    """One ml.backtests row and one ml.model_selection row per selection (caller's transaction)."""
    for s in selections:
        chosen = s.selection
        first, end = (pd.Timestamp(chosen.result.settings[k]).date() for k in ("start", "end"))
        insert_backtest(
            conn,
            run_id,
            chosen.zone,
            s.target,
            (first, end),
            chosen.candidates,
            chosen.metrics_by_model(),
            s.mlflow_run_id,
            chosen.result.wall_seconds,
        )
        insert_model_selection(
            conn,
            chosen.zone,
            s.target,
            chosen.champion_key,
            run_id,
            chosen.metric,
            chosen.value,
            s.mlflow_run_id,
            s.registry_version,
        )
