"""`optibid forecast backtest` on a small epftoolbox-shaped CSV: JSON metrics and per-hour CSV written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from ml.forecasting.cli import app
from tests.ml.conftest import epf_csv


def test_backtest_command_writes_metrics_and_forecasts(tmp_path: Path) -> None:
    # PJM's own format (YYYY/M/D H:MM, header typo) cut to ~75 days keeps the run small.
    lines = epf_csv("PJM").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("2017/1/1 0:00"))
    csv = tmp_path / "PJM.csv"
    csv.write_text("\n".join([lines[0], *lines[start : start + 75 * 24]]) + "\n")
    out = tmp_path / "out" / "pjm.json"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--csv",
            str(csv),
            "--start",
            "2017-03-10",
            "--end",
            "2017-03-12",
            "--out",
            str(out),
            "--models",
            "lear,seasonal_naive",
            "--ensemble",
            "median",
            "--warmup-days",
            "2",
            "--recalibrate-every",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    overall = {row["model"]: row for row in payload["overall"]}
    assert set(overall) == {"LEAR", "seasonal_naive", "ensemble"}
    assert payload["primary_model"] == "ensemble"
    assert all(overall[m]["n"] == 72 for m in overall) and overall["LEAR"]["mae"] > 0
    assert {"rmae", "smape", "pinball", "coverage80", "coverage95"} <= set(overall["ensemble"])
    assert len(payload["per_hour"]) == 3 * 24 and len(payload["per_day"]) == 3 * 3
    forecasts = pd.read_csv(out.with_suffix(".csv"))
    assert len(forecasts) == 3 * 72
    assert {"unique_id", "ds", "model", "y_hat", "lo95", "hi95", "y", "y_naive"} <= set(forecasts.columns)
    assert (forecasts["unique_id"] == "PJM").all()


def test_backtest_command_reports_bad_input(tmp_path: Path) -> None:
    csv = tmp_path / "broken.csv"
    csv.write_text("Date,Price\nyesterday,1\n")
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--csv",
            str(csv),
            "--start",
            "2020-01-01",
            "--end",
            "2020-01-02",
            "--out",
            str(tmp_path / "x.json"),
        ],
    )
    assert result.exit_code == 2
    assert "unparseable timestamps" in result.output
    assert not (tmp_path / "x.json").exists()
