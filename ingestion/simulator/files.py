"""Simulated market files dropped in the landing folder, in every format the upload door accepts.

Each dataset of a simulated day becomes one file; formats rotate (CSV, Excel, JSON Lines, Parquet) so the
demo exercises every reader. Files are written under a temporary name and renamed into place, so the
landing sensor never picks up a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ingestion.simulator.market import MarketDay

FORMATS = ("csv", "xlsx", "jsonl", "parquet")
SIMULATED_FILE_DATASETS = ("prices_hourly", "prices_5min", "load_hourly", "generation_hourly", "weather_hourly")


def write_landing_files(day: MarketDay, landing_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write each dataset of `day` into `landing_dir`, rotating formats; the paths written."""
    landing_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, dataset in enumerate(SIMULATED_FILE_DATASETS):
        frame = getattr(day, dataset)
        if frame.empty:
            continue
        # Excel caps a sheet at 1,048,576 rows and is slow for big 5-minute frames: those go to columnar files.
        fmt = formats[(day.day.toordinal() + index) % len(formats)]
        if dataset == "prices_5min" and fmt in {"xlsx", "jsonl"}:
            fmt = "parquet"
        written.append(_write(frame, landing_dir / f"{dataset}_{day.day.isoformat()}.{fmt}", fmt))
    return written


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    out = frame.copy()
    out["ts_utc"] = pd.to_datetime(out["ts_utc"], utc=True)
    if fmt == "csv":
        out.assign(ts_utc=out["ts_utc"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(tmp, index=False)
    elif fmt == "xlsx":
        # Excel has no time zones: write naive UTC and say so in the header.
        excel = out.assign(ts_utc=out["ts_utc"].dt.tz_localize(None)).rename(columns={"ts_utc": "ts_utc (UTC)"})
        excel.to_excel(tmp, index=False, sheet_name="data", engine="openpyxl")
    elif fmt == "jsonl":
        out.assign(ts_utc=out["ts_utc"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_json(tmp, orient="records", lines=True)
    elif fmt == "parquet":
        out.to_parquet(tmp, index=False)
    else:
        raise ValueError(f"unknown landing file format {fmt!r}; expected one of {FORMATS}")
    os.replace(tmp, path)
    return path
