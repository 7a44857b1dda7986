"""MLflow tracking of forecasting runs and the per-zone model registry (`champion` alias).

What belongs here: logging a backtest (params, metrics, forecast-vs-actual PNG, optionally the pipeline as a
pyfunc model), registering a zone's selected model with alias `champion`, and loading it back. The tracking
URI is always a parameter (the assets pass `Settings.resolved_mlflow_uri`, a SQLite store under
.optibid/mlflow by default); artifacts of a SQLite store go next to the database file, never to ./mlruns.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ml.forecasting.data import ID_COL, TIME_COL, local_date, validated_long_frame
from ml.forecasting.pipeline import BacktestResult, ForecastPipeline

DEFAULT_EXPERIMENT = "optibid-forecasting"
CHAMPION_ALIAS = "champion"


def registered_model_name(zone: str, prefix: str = "optibid-forecast") -> str:
    """The registry name of a zone's day-ahead model."""
    return f"{prefix}-{zone}"


def _artifact_location(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    _artifact_location(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id_for(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment `name` in the store, created (with a local artifact root) if absent."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(tracking_uri)))


def forecast_plot_png(
    forecasts: pd.DataFrame, zone: str, model: str, path: Path, last_days: int = 14
) -> Path:
    """A PNG of actual vs forecast (80%/95% bands) over the last `last_days` days of one zone/model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = forecasts[(forecasts[ID_COL] == zone) & (forecasts["model"] == model)].sort_values(TIME_COL)
    rows = rows[rows[TIME_COL] >= rows[TIME_COL].max() - pd.Timedelta(days=last_days)]
    fig, ax = plt.subplots(figsize=(12, 4))
    ts = rows[TIME_COL].dt.tz_localize(None)
    if {"lo95", "hi95"} <= set(rows.columns):
        ax.fill_between(ts, rows["lo95"], rows["hi95"], alpha=0.15, color="tab:blue", label="95% interval")
        ax.fill_between(ts, rows["lo80"], rows["hi80"], alpha=0.3, color="tab:blue", label="80% interval")
    ax.plot(ts, rows["y_hat"], color="tab:blue", lw=1.2, label=f"forecast ({model})")
    if "y" in rows:
        ax.plot(ts, rows["y"], color="black", lw=1.0, label="actual")
    ax.set_title(f"{zone}: day-ahead forecast vs actual")
    ax.set_ylabel("price")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class PipelinePyfunc:
    """Builds the MLflow pyfunc wrapper around a `ForecastPipeline` (imported lazily: mlflow is heavy)."""

    @staticmethod
    def wrap(pipeline: ForecastPipeline) -> Any:
        import mlflow.pyfunc

        class _Model(mlflow.pyfunc.PythonModel):
            def __init__(self, pipe: ForecastPipeline) -> None:
                self.pipeline = pipe

            def predict(
                self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
            ) -> pd.DataFrame:
                """Forecast rows for the LAST local day in `model_input` (history + that day's exogenous).

                The day is read from the frame because MLflow drops `params` of models without a params
                schema, and the frame's exogenous columns differ per zone (so no fixed input schema either).
                """
                frame = validated_long_frame(model_input)
                day = local_date(frame[TIME_COL].max(), self.pipeline.timezone)
                return self.pipeline.forecast_day(frame, day, self.calibration_days)

            calibration_days = 28

        return _Model(pipeline)


def log_backtest_run(
    result: BacktestResult,
    tracking_uri: str,
    zone: str,
    pipeline: ForecastPipeline | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
) -> str:
    """Log a backtest of one zone to MLflow; the run id.

    Params: the pipeline settings. Metrics: `<model>.<metric>` overall for the zone. Artifacts: the
    forecast-vs-actual PNG of the primary model, the per-hour metrics CSV, and (when `pipeline` is given) the
    pipeline as a pyfunc model under `model`, ready for `register_champion`.
    """
    import mlflow

    client = _client(tracking_uri)
    exp_id = experiment_id_for(tracking_uri, experiment)
    run = client.create_run(exp_id, run_name=run_name or f"backtest-{zone}", tags={"zone": zone})
    run_id = run.info.run_id
    try:
        for key, value in result.settings.items():
            client.log_param(run_id, key, str(value)[:500])
        client.log_param(run_id, "zone", zone)
        overall = result.overall()
        overall = overall[overall[ID_COL] == zone]
        for row in overall.to_dict(orient="records"):
            for metric, value in row.items():
                if metric not in (ID_COL, "model") and pd.notna(value):
                    client.log_metric(run_id, f"{row['model']}.{metric}", float(value))
        client.log_metric(run_id, "wall_seconds", float(result.wall_seconds))
        primary = pipeline.primary_model if pipeline is not None else str(overall["model"].iloc[0])
        with tempfile.TemporaryDirectory() as tmp:
            png = forecast_plot_png(
                result.forecasts, zone, primary, Path(tmp) / f"forecast_vs_actual_{zone}.png"
            )
            client.log_artifact(run_id, str(png))
            per_hour = pd.DataFrame(result.metrics["per_hour"])
            per_hour_path = Path(tmp) / "metrics_per_hour.csv"
            per_hour[per_hour[ID_COL] == zone].to_csv(per_hour_path, index=False)
            client.log_artifact(run_id, str(per_hour_path))
        if pipeline is not None:
            mlflow.set_tracking_uri(tracking_uri)
            with mlflow.start_run(run_id=run_id):
                mlflow.pyfunc.log_model(name="model", python_model=PipelinePyfunc.wrap(pipeline))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def register_champion(run_id: str, zone: str, tracking_uri: str, prefix: str = "optibid-forecast") -> str:
    """Register the run's `model` as a new version of the zone's model aliased `champion`; the version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    name = registered_model_name(zone, prefix)
    version = mlflow.register_model(f"runs:/{run_id}/model", name)
    _client(tracking_uri).set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return str(version.version)


def champion_version(zone: str, tracking_uri: str, prefix: str = "optibid-forecast") -> str | None:
    """The registry version currently aliased `champion` for `zone`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version_by_alias(
            registered_model_name(zone, prefix), CHAMPION_ALIAS
        )
    except MlflowException:
        return None
    return str(mv.version)


def load_champion(zone: str, tracking_uri: str, prefix: str = "optibid-forecast") -> Any:
    """The zone's `champion` model as an MLflow pyfunc; `predict(frame)` forecasts the frame's last day."""
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{registered_model_name(zone, prefix)}@{CHAMPION_ALIAS}")
