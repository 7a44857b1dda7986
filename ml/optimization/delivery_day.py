"""One delivery day's optimization problems: their forecasts, their assembly from the reference assets, the
solve-and-store of every instance, and the re-check of what was stored.

What belongs here: the forecast a problem uses (the newest gold.forecasts run covering the whole day, else a
weekly-naive forecast from the hourly facts), the assembly of `StorageDispatchInput` / `BidCurveInput` /
`UnitCommitmentInput` for one delivery day, the loops the optimization assets run, and reading a stored run
record back (`stored_run_record`) to re-check it. Gold is read through `ml.warehouse_reads` and written
through `ml.optimization.warehouse`; the solvers are the package's public API. No Dagster here.

Modelling assumptions used until the data exists (each is named in the `sources` the assets report):
- renewable output: installed capacity × a capacity-factor profile (solar bell over local daylight, wind flat
  `wind_capacity_factor`), since no per-asset generation forecast lands in gold yet;
- thermal units have a minimum stable output of `thermal_min_output_fraction` of capacity (hydro 0);
- an organization's unit-commitment load in a zone is the zone's load forecast shape scaled so its peak is
  `fleet_peak_utilisation` of the organization's thermal/hydro capacity there (one fleet does not serve a
  whole ISO).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg
from pydantic import BaseModel

from ml.frames import TARGET_COL, TIME_COL
from ml.optimization.bidding import BidCurveInput, BidCurveResult, RenewableGenerator, bid_curve_violations
from ml.optimization.common import SolveOptions
from ml.optimization.explain import storage_schedule_png
from ml.optimization.markets import market_rules_for
from ml.optimization.runs import (
    JSONB_RUN_COLUMNS,
    OPTIMIZATION_RUNS_COLUMNS,
    RECORD_VERSION,
    record_input,
    record_result,
    run_record,
    solve,
)
from ml.optimization.storage import (
    PriceQuantile,
    StorageAsset,
    StorageDispatchInput,
    StorageSchedule,
    storage_schedule_violations,
)
from ml.optimization.thermal import ThermalUnit
from ml.optimization.unit_commitment import (
    UnitCommitmentInput,
    UnitCommitmentResult,
    unit_commitment_violations,
)
from ml.optimization.warehouse import RESULT_TABLES, replace_delivery_day, result_frame
from ml.warehouse_reads import (
    FACT_SOURCES,
    MissingFactsError,
    fact_frame,
    forecast_runs,
    reference_assets,
    result_rows_per_run,
    zone_timezones,
)

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
# Same-hour observations on the days before the delivery day that the weekly-naive spread is taken from.
NAIVE_LOOKBACK_DAYS = 7


class MissingForecastError(LookupError):
    """Neither gold.forecasts nor the hourly facts hold what a forecast for this zone and day needs."""


@dataclass(frozen=True)
class PlanningAssumptions:
    """The stand-ins for data the warehouse does not hold yet (see the module docstring)."""

    thermal_min_output_fraction: float = 0.3
    fleet_peak_utilisation: float = 0.8
    reserve_fraction: float = 0.1
    wind_capacity_factor: float = 0.35
    solar_peak_capacity_factor: float = 0.8
    battery_initial_soc: float = 0.5


@dataclass
class DeliveryDayForecast:
    """The hourly forecast an optimization of one zone and delivery day uses: expected path plus quantile paths."""

    zone: str
    target: str
    hours: list[datetime]
    expected: list[float]
    quantiles: dict[float, list[float]]
    source: str  # "gold.forecasts:<model>@<run_id>" or "weekly_naive:<fact table>"

    @property
    def window(self) -> tuple[datetime, datetime]:
        return self.hours[0], self.hours[-1] + timedelta(hours=1)

    def price_quantiles(self) -> list[PriceQuantile]:
        return [PriceQuantile(level=lv, prices=path) for lv, path in sorted(self.quantiles.items())]


@dataclass
class Instance:
    """One problem to solve for a delivery day, with who owns it and where its inputs came from."""

    org_id: str
    zone: str
    key: str  # asset id (storage) or zone (bids, unit commitment)
    inp: BaseModel
    window: tuple[datetime, datetime]  # the delivery day in UTC: [first hour start, last hour end)
    sources: dict[str, str] = field(default_factory=dict)


def delivery_hours(day: date, timezone: str) -> list[datetime]:
    """UTC starts of the local hours of `day` in `timezone` (23, 24 or 25 of them)."""
    tz = ZoneInfo(timezone)
    start = datetime.combine(day, time(0), tz).astimezone(ZoneInfo("UTC"))
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(ZoneInfo("UTC"))
    return [start + timedelta(hours=h) for h in range(round((end - start).total_seconds() / 3600))]


# --- forecasts ------------------------------------------------------------------------------------------


def stored_forecast(
    conn: psycopg.Connection, zone: str, target: str, hours: list[datetime]
) -> DeliveryDayForecast | None:
    """The newest gold.forecasts run covering every hour of the day for zone/target; None if there is none."""
    frame = forecast_runs(conn, zone, target, hours[0], hours[-1] + timedelta(hours=1))
    if frame.empty:
        return None
    wanted = pd.DatetimeIndex(pd.to_datetime(hours, utc=True))
    for run_id, run in frame.sort_values("created_at", ascending=False).groupby("run_id", sort=False):
        run = run.assign(ts_utc=pd.to_datetime(run["ts_utc"], utc=True)).drop_duplicates("ts_utc")
        run = run.set_index("ts_utc").reindex(wanted)
        if run["y_hat"].isna().any():
            continue
        # An 80 % interval's bounds are the 10 % and 90 % quantiles when the model gives no quantiles.
        q10 = run["q10"].fillna(run["lo80"]).fillna(run["y_hat"])
        q50 = run["q50"].fillna(run["y_hat"])
        q90 = run["q90"].fillna(run["hi80"]).fillna(run["y_hat"])
        lo = np.minimum(np.minimum(q10, q50), q90)
        hi = np.maximum(np.maximum(q10, q50), q90)
        mid = np.clip(q50, lo, hi)
        return DeliveryDayForecast(
            zone=zone,
            target=target,
            hours=hours,
            expected=[float(x) for x in run["y_hat"]],
            quantiles={0.1: _floats(lo), 0.5: _floats(mid), 0.9: _floats(hi)},
            source=f"gold.forecasts:{run['model'].iloc[0]}@{run_id}",
        )
    return None


def weekly_naive_forecast(
    conn: psycopg.Connection, zone: str, target: str, hours: list[datetime]
) -> DeliveryDayForecast:
    """Value one week earlier per hour; quantiles over the same hour of the previous 7 days.

    Hours without a value a week earlier take the median of the available same-hour values. Raises
    MissingForecastError when the hourly fact has no same-hour value at all for some hour.
    """
    table, candidates = FACT_SOURCES[target]
    start = hours[0] - timedelta(days=NAIVE_LOOKBACK_DAYS)
    try:
        facts = fact_frame(conn, target, start, hours[0], [zone])
    except MissingFactsError:
        raise MissingForecastError(
            f"{table} does not exist (or lacks {' / '.join(candidates)}) for zone {zone}"
        ) from None
    history = {
        pd.Timestamp(ts).tz_convert("UTC"): float(v)
        for ts, v in zip(facts[TIME_COL], facts[TARGET_COL], strict=True)
    }
    expected: list[float] = []
    paths: dict[float, list[float]] = {lv: [] for lv in QUANTILE_LEVELS}
    for t in hours:
        ts = pd.Timestamp(t).tz_convert("UTC")
        same_hour = [history[k] for k in (ts - pd.Timedelta(days=d) for d in range(1, 8)) if k in history]
        if not same_hour:
            raise MissingForecastError(
                f"no {target} history in {table} for zone {zone} in the {NAIVE_LOOKBACK_DAYS} days before "
                f"{t.isoformat()} (and no gold.forecasts run covers the day)"
            )
        week_ago = history.get(ts - pd.Timedelta(days=7))
        expected.append(week_ago if week_ago is not None else float(np.median(same_hour)))
        for lv in QUANTILE_LEVELS:
            paths[lv].append(float(np.quantile(same_hour, lv)))
    return DeliveryDayForecast(
        zone=zone,
        target=target,
        hours=hours,
        expected=expected,
        quantiles=paths,
        source=f"weekly_naive:{table}",
    )


def zone_forecast(
    conn: psycopg.Connection, zone: str, target: str, hours: list[datetime]
) -> DeliveryDayForecast:
    """gold.forecasts when a run covers the day, else the weekly-naive forecast from the hourly fact."""
    return stored_forecast(conn, zone, target, hours) or weekly_naive_forecast(conn, zone, target, hours)


def _floats(values: Iterable[float]) -> list[float]:
    return [float(x) for x in values]


# --- problem assembly -----------------------------------------------------------------------------------


def renewable_profile_mw(
    technology: str,
    capacity_mw: float,
    hours: list[datetime],
    timezone: str,
    assumptions: PlanningAssumptions,
) -> list[float]:
    """Expected output per hour: solar bell between 06:00 and 18:00 local, wind flat."""
    if technology == "wind":
        return [capacity_mw * assumptions.wind_capacity_factor] * len(hours)
    tz = ZoneInfo(timezone)
    out = []
    for t in hours:
        local = t.astimezone(tz)
        mid = local.hour + 0.5
        out.append(
            capacity_mw
            * assumptions.solar_peak_capacity_factor
            * max(0.0, math.sin(math.pi * (mid - 6) / 12))
        )
    return out


def thermal_unit(row: pd.Series, assumptions: PlanningAssumptions) -> ThermalUnit:
    """A ThermalUnit from a silver.ref__assets row (thermal or hydro)."""
    min_fraction = assumptions.thermal_min_output_fraction if row["technology"] == "thermal" else 0.0
    return ThermalUnit(
        unit_id=row["asset_id"],
        min_output_mw=float(row["capacity_mw"]) * min_fraction,
        max_output_mw=float(row["capacity_mw"]),
        marginal_cost=float(row["marginal_cost"] or 0.0),
    )


def storage_instances(
    conn: psycopg.Connection, day: date, assumptions: PlanningAssumptions | None = None
) -> tuple[list[Instance], dict[str, str]]:
    """One StorageDispatchInput per battery for `day`, and the assets skipped (asset_id → reason)."""
    assumptions = assumptions or PlanningAssumptions()
    tzs = zone_timezones(conn)
    instances, skipped = [], {}
    for _, a in reference_assets(conn, ["battery"]).iterrows():
        hours = delivery_hours(day, tzs[a["zone"]])
        try:
            fc = zone_forecast(conn, a["zone"], "price", hours)
        except MissingForecastError as exc:
            skipped[a["asset_id"]] = str(exc)
            continue
        asset = StorageAsset(
            asset_id=a["asset_id"],
            power_mw=float(a["capacity_mw"]),
            # A battery row without energy is taken as a 1-hour battery rather than dropped.
            energy_mwh=float(a["energy_mwh"] or a["capacity_mw"]),
            initial_soc=assumptions.battery_initial_soc,
            # For batteries the reference marginal cost is the wear cost per MWh discharged.
            degradation_cost_per_mwh=max(0.0, float(a["marginal_cost"] or 0.0)),
        )
        inp = StorageDispatchInput(
            asset=asset, price_forecast=fc.expected, start=hours[0], price_quantiles=fc.price_quantiles()
        )
        instances.append(
            Instance(a["org_id"], a["zone"], a["asset_id"], inp, fc.window, {"price": fc.source})
        )
    return instances, skipped


def bid_curve_instances(
    conn: psycopg.Connection, day: date, assumptions: PlanningAssumptions | None = None
) -> tuple[list[Instance], dict[str, str]]:
    """One BidCurveInput per (organization, zone) with its solar/wind/thermal/hydro assets; skipped zones."""
    assumptions = assumptions or PlanningAssumptions()
    tzs = zone_timezones(conn)
    assets = reference_assets(conn, ["solar", "wind", "thermal", "hydro"])
    instances, skipped = [], {}
    for (org_id, zone), group in assets.groupby(["org_id", "zone"], sort=True):
        hours = delivery_hours(day, tzs[zone])
        try:
            fc = zone_forecast(conn, zone, "price", hours)
        except MissingForecastError as exc:
            skipped[f"{org_id}/{zone}"] = str(exc)
            continue
        renewables = [
            RenewableGenerator(
                asset_id=r["asset_id"],
                forecast_mw=renewable_profile_mw(
                    r["technology"], float(r["capacity_mw"]), hours, tzs[zone], assumptions
                ),
                marginal_cost=float(r["marginal_cost"] or 0.0),
            )
            for _, r in group[group["technology"].isin(["solar", "wind"])].iterrows()
        ]
        thermal = [
            thermal_unit(r, assumptions)
            for _, r in group[group["technology"].isin(["thermal", "hydro"])].iterrows()
        ]
        inp = BidCurveInput(
            zone=zone,
            delivery_start=hours[0],
            price_quantiles=fc.price_quantiles(),
            renewables=renewables,
            thermal=thermal,
        )
        sources = {"price": fc.source}
        if renewables:
            sources["renewables"] = "capacity_factor_profile"
        instances.append(Instance(org_id, zone, zone, inp, fc.window, sources))
    return instances, skipped


def unit_commitment_instances(
    conn: psycopg.Connection, day: date, assumptions: PlanningAssumptions | None = None
) -> tuple[list[Instance], dict[str, str]]:
    """One UnitCommitmentInput per (organization, zone) with thermal/hydro units; skipped zones."""
    assumptions = assumptions or PlanningAssumptions()
    tzs = zone_timezones(conn)
    assets = reference_assets(conn, ["thermal", "hydro"])
    instances, skipped = [], {}
    for (org_id, zone), group in assets.groupby(["org_id", "zone"], sort=True):
        hours = delivery_hours(day, tzs[zone])
        try:
            fc = zone_forecast(conn, zone, "load", hours)
        except MissingForecastError as exc:
            skipped[f"{org_id}/{zone}"] = str(exc)
            continue
        units = [thermal_unit(r, assumptions) for _, r in group.iterrows()]
        capacity = sum(u.max_output_mw for u in units)
        peak = max(fc.expected)
        scale = assumptions.fleet_peak_utilisation * capacity / peak if peak > 0 else 0.0
        inp = UnitCommitmentInput(
            zone=zone,
            start=hours[0],
            load_forecast_mw=[x * scale for x in fc.expected],
            reserve_fraction=assumptions.reserve_fraction,
            units=units,
        )
        sources = {
            "load": fc.source,
            "load_scale": f"zone load × {scale:.6g} (peak = fleet capacity × "
            f"{assumptions.fleet_peak_utilisation})",
        }
        instances.append(Instance(org_id, zone, zone, inp, fc.window, sources))
    return instances, skipped


# --- solve and store, re-check ---------------------------------------------------------------------


@dataclass
class SolvedInstance:
    """An instance, its result and the run record stored for it."""

    instance: Instance
    result: BaseModel
    record: dict[str, Any]


def _identities(problem: str, inst: Instance) -> list[str]:
    if problem == "unit_commitment":
        return [u.unit_id for u in inst.inp.units]  # type: ignore[attr-defined]
    return [inst.key]


def solve_and_store(
    conn: psycopg.Connection, instances: list[Instance], options: SolveOptions | None = None
) -> list[SolvedInstance]:
    """Solve every instance, store each run and replace its delivery day's results (caller's transaction)."""
    options = options or SolveOptions()
    solved = []
    for inst in instances:
        result = solve(inst.inp, options)
        record = run_record(inst.inp, result, options, org_id=inst.org_id)
        problem = record["problem"]
        replace_delivery_day(conn, problem, inst.org_id, _identities(problem, inst), inst.window, [record])
        solved.append(SolvedInstance(inst, result, record))
    return solved


class NothingToOptimizeError(LookupError):
    """No asset or zone of the delivery day has the inputs its problem needs; `skipped` says why per key."""

    def __init__(self, day: date, skipped: dict[str, str]) -> None:
        super().__init__(f"nothing to optimize for {day}: every asset/zone lacks inputs")
        self.skipped = skipped


InstanceBuilder = Callable[[psycopg.Connection, date], tuple[list[Instance], dict[str, str]]]


@dataclass
class DayOptimization:
    """Every instance of one problem solved and stored for a delivery day, and the keys skipped."""

    day: date
    solved: list[SolvedInstance]
    skipped: dict[str, str]  # asset id or "<org>/<zone>" -> why

    @property
    def records(self) -> list[dict[str, Any]]:
        return [s.record for s in self.solved]

    def result_rows(self) -> pd.DataFrame:
        """The gold rows written, all instances together."""
        return pd.concat([result_frame(r) for r in self.records], ignore_index=True)

    def log_lines(self) -> list[str]:
        """One line per instance: problem, owner/key and solver status."""
        return [
            f"{s.record['problem']} {s.instance.org_id}/{s.instance.key}: {s.record['status']}" for s in self.solved
        ]

    def forecast_source_kinds(self) -> dict[str, int]:
        """How many instances took their price/load forecast from each kind of source (`gold.forecasts`,
        `weekly_naive`): the headline of where the forecasts came from."""
        return dict(
            Counter(
                src.split(":")[0]
                for s in self.solved
                for target, src in s.instance.sources.items()
                if target in ("price", "load")
            )
        )


def optimize_delivery_day(
    conn: psycopg.Connection, day: date, build: InstanceBuilder, options: SolveOptions
) -> DayOptimization:
    """Build the day's instances with `build` (e.g. `storage_instances`), solve and store each.

    Raises NothingToOptimizeError when no instance could be built. Runs in the caller's transaction.
    """
    instances, skipped = build(conn, day)
    if not instances:
        raise NothingToOptimizeError(day, skipped)
    return DayOptimization(day, solve_and_store(conn, instances, options), skipped)


def storage_schedule_plots(solved: Iterable[SolvedInstance], folder: Path, label: str) -> list[str]:
    """One PNG per solved battery schedule with intervals, titled `<asset> <label>`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for s in solved:
        if isinstance(s.result, StorageSchedule) and s.result.intervals:
            path = folder / f"storage_{s.instance.key}.png"
            storage_schedule_png(s.result, path, title=f"{s.instance.key} {label}")
            plots.append(str(path))
    return plots


def stored_run_record(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    """A run record read back from ml.optimization_runs (what `resolve_run_record` takes)."""
    row = conn.execute(
        """SELECT run_id, org_id, problem, created_at, status, objective, relative_gap, solve_time_s,
                  hit_time_limit, solver, options, inputs, outputs
           FROM ml.optimization_runs WHERE run_id = %s""",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    record = dict(zip(OPTIMIZATION_RUNS_COLUMNS, row, strict=True))
    for k in JSONB_RUN_COLUMNS:
        if isinstance(record[k], str):
            record[k] = json.loads(record[k])
    record["created_at"] = record["created_at"].isoformat()
    record["record_version"] = RECORD_VERSION
    return record


def _record_violations(record: dict[str, Any]) -> list[str]:
    inp, result = record_input(record), record_result(record)
    if isinstance(result, StorageSchedule):
        return storage_schedule_violations(inp, result) if result.intervals else []  # type: ignore[arg-type]
    if isinstance(result, BidCurveResult):
        rules = market_rules_for(result.market)
        return [v for curve in result.curves for v in bid_curve_violations(curve, rules)]
    if isinstance(result, UnitCommitmentResult) and result.units:
        return unit_commitment_violations(inp, result)  # type: ignore[arg-type]
    return []


def delivery_day_violations(
    conn: psycopg.Connection, problem: str, day: date
) -> tuple[int, dict[str, list[str]]]:
    """Re-check the runs whose gold rows fall on `day`: (runs checked, run_id → broken constraints).

    Each stored result is validated against its stored input with the library's checkers, and its gold rows
    must be exactly the rows of the record. Zone-local days span UTC −12..+14 h, so runs with rows within
    that margin of the UTC day are checked (a neighbouring day's run may be checked too; that is harmless).
    """
    table, _, time_col, _ = RESULT_TABLES[problem]
    start = datetime.combine(day, time(0), ZoneInfo("UTC")) - timedelta(hours=14)
    end = datetime.combine(day + timedelta(days=1), time(0), ZoneInfo("UTC")) + timedelta(hours=14)
    counts = result_rows_per_run(conn, table, time_col, start, end)
    problems: dict[str, list[str]] = {}
    for run_id, rows in counts.items():
        record = stored_run_record(conn, run_id)
        if record is None:
            problems[run_id] = ["run missing from ml.optimization_runs"]
            continue
        found = _record_violations(record)
        expected = len(result_frame(record))
        if rows != expected:
            found.append(f"{table} holds {rows} rows of this run, its record has {expected}")
        if found:
            problems[run_id] = found
    return len(counts), problems
