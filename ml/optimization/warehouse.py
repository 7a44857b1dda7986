"""Warehouse side of optimization: read inputs from silver/gold, build problem inputs, store runs and results.

Belongs here: the SQL reads the optimization assets and the optimize API need (reference assets, zone
timezones, price/load forecasts from `gold.forecasts` with a weekly-naive fallback from the hourly facts),
the assembly of `StorageDispatchInput` / `BidCurveInput` / `UnitCommitmentInput` for one delivery day, and
the writes of runs and result frames (idempotent per delivery day). Plain psycopg 3 connections in, pandas
and pydantic models out; no Dagster here (assets/optimization.py is the thin wrapper).

Modelling assumptions used until the data exists (each is named in `*_source` fields the assets report):
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from pydantic import BaseModel

from infra.db import db_value, insert_frame
from infra.signals import bump_table_version
from ml.optimization.bidding import BidCurveInput, BidCurveResult, RenewableGenerator, bid_curve_violations
from ml.optimization.common import SolveOptions
from ml.optimization.markets import market_rules_for
from ml.optimization.runs import (
    OPTIMIZATION_RUNS_COLUMNS,
    RECORD_VERSION,
    bid_curves_frame,
    optimization_runs_frame,
    record_input,
    record_result,
    run_record,
    solve,
    storage_schedules_frame,
    unit_commitment_frame,
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

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
# Same-hour observations on the days before the delivery day that the weekly-naive spread is taken from.
NAIVE_LOOKBACK_DAYS = 7
_JSONB_RUN_COLUMNS = frozenset({"options", "inputs", "outputs"})
_TARGET_SOURCES = {
    # target → (fact table, candidate value columns in order of preference)
    "price": ("gold.fct_prices_hourly", ("price_avg",)),
    # dbt's mart names the column load_mw_avg; the contract's short form load_mw is accepted as well.
    "load": ("gold.fct_load_hourly", ("load_mw_avg", "load_mw")),
}


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
class ZoneForecast:
    """An hourly forecast for one zone and delivery day: expected path plus quantile paths."""

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


# --- reads ----------------------------------------------------------------------------------------------


def zone_timezones(conn: psycopg.Connection) -> dict[str, str]:
    """zone → IANA timezone from silver.ref__zones."""
    return dict(conn.execute("SELECT zone, timezone FROM silver.ref__zones").fetchall())


def delivery_hours(day: date, timezone: str) -> list[datetime]:
    """UTC starts of the local hours of `day` in `timezone` (23, 24 or 25 of them)."""
    tz = ZoneInfo(timezone)
    start = datetime.combine(day, time(0), tz).astimezone(ZoneInfo("UTC"))
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(ZoneInfo("UTC"))
    return [start + timedelta(hours=h) for h in range(round((end - start).total_seconds() / 3600))]


def reference_assets(conn: psycopg.Connection, technologies: Iterable[str]) -> pd.DataFrame:
    """silver.ref__assets rows of the given technologies (asset_id, org_id, zone, technology, capacity...)."""
    rows = conn.execute(
        """SELECT asset_id, org_id, zone, name, technology, capacity_mw, energy_mwh, marginal_cost
           FROM silver.ref__assets WHERE technology = ANY(%s) ORDER BY org_id, zone, asset_id""",
        (list(technologies),),
    ).fetchall()
    return pd.DataFrame(
        rows,
        columns=[
            "asset_id",
            "org_id",
            "zone",
            "name",
            "technology",
            "capacity_mw",
            "energy_mwh",
            "marginal_cost",
        ],
    )


def _table_columns(conn: psycopg.Connection, qualified: str) -> set[str]:
    schema, name = qualified.split(".")
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, name),
    ).fetchall()
    return {r[0] for r in rows}


def stored_forecast(
    conn: psycopg.Connection, zone: str, target: str, hours: list[datetime]
) -> ZoneForecast | None:
    """The newest gold.forecasts run covering every hour of the day for zone/target; None if there is none."""
    if not _table_columns(conn, "gold.forecasts"):
        return None
    rows = conn.execute(
        """SELECT run_id, model, ts_utc, y_hat, q10, q50, q90, lo80, hi80, created_at
           FROM gold.forecasts WHERE zone = %s AND target = %s AND ts_utc >= %s AND ts_utc < %s""",
        (zone, target, hours[0], hours[-1] + timedelta(hours=1)),
    ).fetchall()
    if not rows:
        return None
    frame = pd.DataFrame(
        rows,
        columns=["run_id", "model", "ts_utc", "y_hat", "q10", "q50", "q90", "lo80", "hi80", "created_at"],
    )
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
        return ZoneForecast(
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
) -> ZoneForecast:
    """Value one week earlier per hour; quantiles over the same hour of the previous 7 days.

    Hours without a value a week earlier take the median of the available same-hour values. Raises
    MissingForecastError when the hourly fact has no same-hour value at all for some hour.
    """
    table, candidates = _TARGET_SOURCES[target]
    columns = _table_columns(conn, table)
    value = next((c for c in candidates if c in columns), None)
    if value is None:
        raise MissingForecastError(
            f"{table} does not exist (or lacks {' / '.join(candidates)}) for zone {zone}"
        )
    where = [sql.SQL("zone = %s"), sql.SQL("ts_utc >= %s"), sql.SQL("ts_utc < %s")]
    if "org_id" in columns:
        where.append(sql.SQL("org_id IS NULL"))  # public market data, not an organization's upload
    market = sql.Identifier("market") if "market" in columns else sql.Literal("")
    query = sql.SQL("SELECT ts_utc, {m}, avg({v}) FROM {t} WHERE {w} GROUP BY 1, 2").format(
        m=market, v=sql.Identifier(value), t=sql.Identifier(*table.split(".")), w=sql.SQL(" AND ").join(where)
    )
    start = hours[0] - timedelta(days=NAIVE_LOOKBACK_DAYS)
    rows = [r for r in conn.execute(query, (zone, start, hours[0])) if r[2] is not None]
    # Day-ahead prices when the zone has them, otherwise the first market it has.
    markets = sorted({r[1] for r in rows}, key=lambda m: (m != "DA", m))
    history = {
        pd.Timestamp(ts).tz_convert("UTC"): float(v) for ts, m, v in rows if markets and m == markets[0]
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
    return ZoneForecast(
        zone=zone,
        target=target,
        hours=hours,
        expected=expected,
        quantiles=paths,
        source=f"weekly_naive:{table}",
    )


def zone_forecast(conn: psycopg.Connection, zone: str, target: str, hours: list[datetime]) -> ZoneForecast:
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


# --- writes ---------------------------------------------------------------------------------------------


def insert_runs(conn: psycopg.Connection, records: list[dict[str, Any]]) -> int:
    """Insert run records into ml.optimization_runs."""
    return insert_frame(conn, "ml.optimization_runs", optimization_runs_frame(records), _JSONB_RUN_COLUMNS)


# (result table, frame builder, time column, identity column) per problem.
_RESULTS = {
    "storage_dispatch": ("gold.storage_schedules", storage_schedules_frame, "interval_start", "asset_id"),
    "bid_curves": ("gold.bid_curves", bid_curves_frame, "delivery_start", "zone"),
    "unit_commitment": ("gold.unit_commitment", unit_commitment_frame, "hour_start", "unit_id"),
}


def result_frame(record: dict[str, Any]) -> pd.DataFrame:
    """The gold rows of one run record."""
    return _RESULTS[record["problem"]][1](record)


def replace_delivery_day(
    conn: psycopg.Connection,
    problem: str,
    org_id: str,
    identities: list[str],
    window: tuple[datetime, datetime],
    records: list[dict[str, Any]],
) -> int:
    """Delete the org's rows of `identities` (assets, zones or units) in `window`, then insert `records`.

    Runs in the caller's transaction, so a delivery day is replaced atomically and re-running it never
    duplicates rows. Runs stay in ml.optimization_runs (every run is kept); only results are replaced. The
    delivery day's version of the result table is bumped in the same transaction, so the API follows.
    Returns the number of result rows inserted.
    """
    table, _, time_col, id_col = _RESULTS[problem]
    conn.execute(
        sql.SQL("DELETE FROM {t} WHERE org_id = %s AND {i} = ANY(%s) AND {c} >= %s AND {c} < %s").format(
            t=sql.Identifier(*table.split(".")), i=sql.Identifier(id_col), c=sql.Identifier(time_col)
        ),
        (org_id, identities, window[0], window[1]),
    )
    insert_runs(conn, records)
    written = sum(insert_frame(conn, table, result_frame(r)) for r in records)
    bump_table_version(conn, table, delivery_date(window))
    return written


def delivery_date(window: tuple[datetime, datetime]) -> date:
    """The local delivery day of a UTC window [first hour start, last hour end) of one zone-local day.

    The UTC date of its midpoint (local noon), which is the local date for every offset from UTC-11 to
    UTC+12, so for every zone of the reference data.
    """
    start, end = window
    return (start + (end - start) / 2).astimezone(ZoneInfo("UTC")).date()


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
    for k in _JSONB_RUN_COLUMNS:
        if isinstance(record[k], str):
            record[k] = json.loads(record[k])
    record["created_at"] = record["created_at"].isoformat()
    record["record_version"] = RECORD_VERSION
    return record


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


def run_insert_statement() -> sql.Composed:
    """INSERT of one ml.optimization_runs row; parameters from `run_params` (sync or async connections)."""
    return sql.SQL("INSERT INTO ml.optimization_runs ({c}) VALUES ({v})").format(
        c=sql.SQL(", ").join(map(sql.Identifier, OPTIMIZATION_RUNS_COLUMNS)),
        v=sql.SQL(", ").join(
            sql.SQL("%s::jsonb" if c in _JSONB_RUN_COLUMNS else "%s") for c in OPTIMIZATION_RUNS_COLUMNS
        ),
    )


def run_params(record: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters of `run_insert_statement` for one run record."""
    frame = optimization_runs_frame([record])
    return tuple(db_value(v) for v in frame.astype(object).iloc[0])


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
    table, _, time_col, _ = _RESULTS[problem]
    start = datetime.combine(day, time(0), ZoneInfo("UTC")) - timedelta(hours=14)
    end = datetime.combine(day + timedelta(days=1), time(0), ZoneInfo("UTC")) + timedelta(hours=14)
    counts = dict(
        conn.execute(
            sql.SQL(
                "SELECT run_id, count(*) FROM {t} WHERE run_id IN "
                "(SELECT DISTINCT run_id FROM {t} WHERE {c} >= %s AND {c} < %s) GROUP BY run_id"
            ).format(t=sql.Identifier(*table.split(".")), c=sql.Identifier(time_col)),
            (start, end),
        ).fetchall()
    )
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
