"""Writes of the forecasting side of ML: gold.forecasts, gold.anomalies, ml.drift_summaries, ml.backtests and
ml.model_selection.

What belongs here: the SQL that writes (plain psycopg 3 connections in, in the caller's transaction), each
write idempotent per partition: delete the partition's rows, then insert, and bump the table version the API
follows. What does not: reads (`ml.warehouse_reads`) and the forecasting itself (`ml.forecasting.daily`,
`ml.forecasting.backtests`). No Dagster here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from infra.db import db_value, insert_frame
from infra.signals import bump_table_version

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


DRIFT_SUMMARY_COLUMNS = [
    "zone",
    "drift_share",
    "n_drifted",
    "n_columns",
    "dataset_drift",
    "target_drift",
    "error_drift",
    "drifted_columns",
]


def replace_drift_summaries(
    conn: psycopg.Connection,
    summaries: pd.DataFrame,
    reference_start: datetime,
    current_start: datetime,
    current_end: datetime,
) -> int:
    """Replace the drift window's rows of ml.drift_summaries with `summaries` (`ml.monitoring.drift_by_zone`'s
    frame: one row per zone, `unique_id` the zone; caller's transaction). The window is identified by
    `current_end`, so a re-run of the same week replaces its summaries."""
    conn.execute("DELETE FROM ml.drift_summaries WHERE current_end = %s", (current_end,))
    rows = summaries.rename(columns={"unique_id": "zone"})[DRIFT_SUMMARY_COLUMNS].assign(
        reference_start=reference_start, current_start=current_start, current_end=current_end
    )
    return insert_frame(conn, "ml.drift_summaries", rows)


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


SHADOW_COLUMNS = ["zone", "ts_utc", "target", "model", "model_version", "run_id", "y_hat", "delivery_date"]


def replace_shadow_forecasts(
    conn: psycopg.Connection, delivery_date: date, zone: str, target: str, rows: pd.DataFrame
) -> int:
    """Replace a zone's challenger forecast of a delivery day in ml.shadow_forecasts (caller's transaction)."""
    conn.execute(
        "DELETE FROM ml.shadow_forecasts WHERE delivery_date = %s AND zone = %s AND target = %s",
        (delivery_date, zone, target),
    )
    return insert_frame(conn, "ml.shadow_forecasts", rows[SHADOW_COLUMNS])


def replace_accuracy(
    conn: psycopg.Connection,
    scored_date: date,
    targets: Sequence[str],
    rows: pd.DataFrame,
    zones: Sequence[str] | None = None,
) -> int:
    """Replace the accuracy rows of a scored day (of `zones`, or all) in ml.forecast_accuracy."""
    if zones is None:
        conn.execute(
            "DELETE FROM ml.forecast_accuracy WHERE scored_date = %s AND target = ANY(%s)", (scored_date, list(targets))
        )
    else:
        conn.execute(
            "DELETE FROM ml.forecast_accuracy WHERE scored_date = %s AND target = ANY(%s) AND zone = ANY(%s)",
            (scored_date, list(targets), list(zones)),
        )
    if rows.empty:
        return 0
    return insert_frame(conn, "ml.forecast_accuracy", rows)


def insert_promotion_decision(conn: psycopg.Connection, decision: Any, run_id: str) -> None:
    """One ml.promotion_decisions row from a `ml.forecasting.accuracy.PromotionDecision`."""
    conn.execute(
        """INSERT INTO ml.promotion_decisions (zone, target, champion, challenger, days, champion_mae,
               challenger_mae, dm_statistic, p_value, promoted, reason, run_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            decision.zone,
            decision.target,
            decision.champion,
            decision.challenger,
            decision.days,
            *(db_value(_json_safe(v)) for v in (decision.champion_mae, decision.challenger_mae)),
            *(db_value(_json_safe(v)) for v in (decision.dm_statistic, decision.p_value)),
            decision.promoted,
            decision.reason,
            run_id,
        ),
    )


EXPLANATION_COLUMNS = [
    "zone",
    "target",
    "delivery_date",
    "model",
    "ts_utc",
    "feature",
    "feature_value",
    "contribution",
    "y_hat",
    "method",
    "run_id",
    "mlflow_run_id",
]


def replace_explanations(
    conn: psycopg.Connection, delivery_date: date, zone: str, target: str, rows: pd.DataFrame
) -> int:
    """Replace a zone's explanation rows of a delivery day in ml.forecast_explanations (caller's transaction)."""
    conn.execute(
        "DELETE FROM ml.forecast_explanations WHERE delivery_date = %s AND zone = %s AND target = %s",
        (delivery_date, zone, target),
    )
    rows = rows.assign(delivery_date=delivery_date)
    for column in ("mlflow_run_id",):
        if column not in rows:
            rows = rows.assign(**{column: None})
    return insert_frame(conn, "ml.forecast_explanations", rows[EXPLANATION_COLUMNS])


def set_explanations_mlflow_run(conn: psycopg.Connection, delivery_date: date, run_id: str, mlflow_run_id: str) -> None:
    """Link the day's explanation rows written by `run_id` to the MLflow run holding their plots."""
    conn.execute(
        "UPDATE ml.forecast_explanations SET mlflow_run_id = %s WHERE delivery_date = %s AND run_id = %s",
        (mlflow_run_id, delivery_date, run_id),
    )
