"""`optibid forecast ...` commands (a Typer sub-app that `app/cli.py` mounts as `forecast`).

What belongs here: argument parsing, progress display and file output around library calls; no modelling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ml.forecasting.data import ForecastDataError, read_price_csv
from ml.forecasting.pipeline import ForecastPipeline, production_pipeline

app = typer.Typer(
    help="Day-ahead price forecasting: backtests of the production pipeline and the model zoo.",
    no_args_is_help=True,
)
console = Console(stderr=True)


@app.callback()
def forecast() -> None:
    """Day-ahead price forecasting commands."""


def pipeline_for(
    models: list[str] | None, ensemble: str, timezone: str, recalibrate_every: int, alpha_refresh_days: int
) -> ForecastPipeline:
    """The production pipeline, or a pipeline over the named models (with `ensemble` across them)."""
    if not models or models == ["production"]:
        return production_pipeline(timezone, recalibrate_every, alpha_refresh_days)
    names = [n.strip() for m in models for n in m.split(",") if n.strip()]
    return ForecastPipeline(
        names,
        ensemble=None if ensemble == "none" else ensemble,
        timezone=timezone,
        recalibrate_every_days=recalibrate_every,
    )


@app.command("backtest")
def backtest(
    csv: Annotated[Path, typer.Option("--csv", help="epftoolbox-shaped CSV: timestamp, price, exogenous...")],
    start: Annotated[str, typer.Option("--start", help="first scored local day (YYYY-MM-DD)")],
    end: Annotated[str, typer.Option("--end", help="last scored local day (YYYY-MM-DD)")],
    out: Annotated[Path, typer.Option("--out", help="metrics JSON; forecasts go next to it as <stem>.csv")],
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="'production' (default) or model names: lear, seasonal_naive, auto_ets, auto_arima, "
            "mstl, auto_theta, nhits, nbeatsx, tft (repeat or comma-separate)",
        ),
    ] = None,
    ensemble: Annotated[str, typer.Option(help="median | inverse_error | none")] = "median",
    zone: Annotated[str | None, typer.Option(help="unique_id of the series (default: file stem)")] = None,
    timezone: Annotated[str, typer.Option(help="market timezone of the timestamps and days")] = "UTC",
    recalibrate_every: Annotated[int, typer.Option(help="days between model refits (1 = daily)")] = 1,
    alpha_refresh_days: Annotated[int, typer.Option(help="days between LEAR AIC alpha selections")] = 28,
    warmup_days: Annotated[
        int, typer.Option(help="unscored days before --start that calibrate intervals")
    ] = 28,
) -> None:
    """Rolling-origin day-ahead backtest; writes metrics JSON to OUT and per-hour forecasts to OUT.csv."""
    try:
        frame = read_price_csv(csv, unique_id=zone, timezone=timezone)
        pipeline = pipeline_for(models, ensemble, timezone, recalibrate_every, alpha_refresh_days)
    except (ForecastDataError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("forecasting days", total=None)

        def advance(done: int, total: int, day: object) -> None:
            bar.update(task, completed=done, total=total, description=f"forecasting {str(day)[:10]}")

        try:
            result = pipeline.backtest(frame, start, end, warmup_days=warmup_days, progress=advance)
        except (ForecastDataError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=2) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    forecasts_path = out.with_suffix(".csv")
    result.forecasts.to_csv(forecasts_path, index=False)
    payload = {
        "settings": result.settings,
        "wall_seconds": result.wall_seconds,
        "primary_model": pipeline.primary_model,
        "forecasts_csv": str(forecasts_path),
        **result.metrics,
    }
    out.write_text(json.dumps(payload, indent=1, default=str))
    table = Table(title=f"{csv.name} {start}..{end}")
    for col in ("model", "MAE", "RMSE", "sMAPE%", "rMAE", "pinball", "cov80", "cov95"):
        table.add_column(col)
    for row in result.overall().to_dict(orient="records"):
        table.add_row(
            str(row["model"]),
            *(
                f"{row.get(k, float('nan')):.3f}"
                for k in ("mae", "rmse", "smape", "rmae", "pinball", "coverage80", "coverage95")
            ),
        )
    Console().print(table)
    console.print(f"metrics -> {out}, forecasts -> {forecasts_path} ({result.wall_seconds:.0f} s)")
