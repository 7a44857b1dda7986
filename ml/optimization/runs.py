"""Storable optimization runs: JSON run records, re-solving from a record, and tidy frames for the tables.

Belongs here: turning a (problem, input, options, result) into the JSON-serialisable record stored in
`ml.optimization_runs`, re-solving from such a record (reproducibility), and the pandas frames whose columns
match `gold.bid_curves`, `gold.storage_schedules` and `gold.unit_commitment` (infra/sql/070_optimization.sql).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel

from ml.optimization.bidding import BidCurveInput, BidCurveResult, build_bid_curves
from ml.optimization.common import SolveOptions, SolveStatus
from ml.optimization.storage import StorageDispatchInput, StorageSchedule, solve_storage_dispatch
from ml.optimization.unit_commitment import UnitCommitmentInput, UnitCommitmentResult, solve_unit_commitment

RECORD_VERSION = 1

PROBLEMS: dict[str, tuple[type[BaseModel], type[BaseModel], Callable[..., Any]]] = {
    "storage_dispatch": (StorageDispatchInput, StorageSchedule, solve_storage_dispatch),
    "bid_curves": (BidCurveInput, BidCurveResult, build_bid_curves),
    "unit_commitment": (UnitCommitmentInput, UnitCommitmentResult, solve_unit_commitment),
}


def problem_of(inp: BaseModel) -> str:
    """The problem name of an input model (a key of PROBLEMS)."""
    for name, (input_type, _, _) in PROBLEMS.items():
        if isinstance(inp, input_type):
            return name
    raise TypeError(f"not an optimization input: {type(inp).__name__}")


def solve(inp: BaseModel, options: SolveOptions | None = None) -> BaseModel:
    """Solve any optimization input with the solver of its problem."""
    return PROBLEMS[problem_of(inp)][2](inp, options or SolveOptions())


def run_record(
    inp: BaseModel,
    result: BaseModel,
    options: SolveOptions | None = None,
    *,
    org_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """JSON-serialisable record of one run: inputs, options, solver status, objective, gap, time, outputs."""
    options = options or SolveOptions()
    problem = problem_of(inp)
    if isinstance(result, BidCurveResult):
        status, objective, gap, seconds, hit, solver = (
            SolveStatus.OPTIMAL if not result.notes else SolveStatus.FEASIBLE,
            None,
            None,
            result.solve_time_s,
            bool(result.notes),
            options.mip_solver,
        )
    else:
        info = result.info  # type: ignore[attr-defined]
        status, objective, gap, seconds, hit, solver = (
            info.status,
            info.objective,
            info.relative_gap,
            info.solve_time_s,
            info.hit_time_limit,
            info.solver,
        )
    record = {
        "record_version": RECORD_VERSION,
        "run_id": run_id or str(uuid.uuid4()),
        "org_id": org_id,
        "problem": problem,
        "created_at": datetime.now(UTC).isoformat(),
        "status": str(status),
        "objective": objective,
        "relative_gap": gap,
        "solve_time_s": seconds,
        "hit_time_limit": hit,
        "solver": solver,
        "options": options.model_dump(mode="json"),
        "inputs": inp.model_dump(mode="json"),
        "outputs": result.model_dump(mode="json"),
    }
    json.dumps(record)  # fail here, not at storage time, if anything is not JSON
    return record


def record_input(record: dict[str, Any]) -> BaseModel:
    """The validated input model stored in a run record."""
    input_type = PROBLEMS[record["problem"]][0]
    return input_type.model_validate(record["inputs"])


def record_result(record: dict[str, Any]) -> BaseModel:
    """The result model stored in a run record."""
    return PROBLEMS[record["problem"]][1].model_validate(record["outputs"])


def resolve_run_record(record: dict[str, Any]) -> BaseModel:
    """Re-solve the stored inputs with the stored options; the fresh result (compare to record_result)."""
    if record.get("record_version") != RECORD_VERSION:
        raise ValueError(f"record_version {record.get('record_version')!r} is not {RECORD_VERSION}")
    options = SolveOptions.model_validate(record["options"])
    return PROBLEMS[record["problem"]][2](record_input(record), options)


def optimization_runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows for ml.optimization_runs (inputs/options/outputs as JSON text for jsonb columns)."""
    rows = [
        {
            "run_id": r["run_id"],
            "org_id": r["org_id"],
            "problem": r["problem"],
            "created_at": pd.Timestamp(r["created_at"]),
            "status": r["status"],
            "objective": r["objective"],
            "relative_gap": r["relative_gap"],
            "solve_time_s": r["solve_time_s"],
            "hit_time_limit": r["hit_time_limit"],
            "solver": r["solver"],
            "options": json.dumps(r["options"]),
            "inputs": json.dumps(r["inputs"]),
            "outputs": json.dumps(r["outputs"]),
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=OPTIMIZATION_RUNS_COLUMNS)


OPTIMIZATION_RUNS_COLUMNS = [
    "run_id",
    "org_id",
    "problem",
    "created_at",
    "status",
    "objective",
    "relative_gap",
    "solve_time_s",
    "hit_time_limit",
    "solver",
    "options",
    "inputs",
    "outputs",
]
# The ml.optimization_runs columns stored as jsonb (the record's nested parts).
JSONB_RUN_COLUMNS = frozenset({"options", "inputs", "outputs"})
STORAGE_SCHEDULE_COLUMNS = [
    "run_id",
    "org_id",
    "asset_id",
    "interval_index",
    "interval_start",
    "interval_minutes",
    "price",
    "charge_mw",
    "discharge_mw",
    "net_mw",
    "soc_mwh",
    "revenue",
    "energy_value",
    "binding",
    "rationale",
]
BID_CURVE_COLUMNS = [
    "run_id",
    "org_id",
    "zone",
    "market",
    "currency",
    "asset_id",
    "asset_type",
    "hour",
    "delivery_start",
    "step",
    "price",
    "quantity_mw",
]
UNIT_COMMITMENT_COLUMNS = [
    "run_id",
    "org_id",
    "unit_id",
    "hour",
    "hour_start",
    "is_on",
    "started",
    "output_mw",
    "cost",
    "marginal_price",
]


def _expect(record: dict[str, Any], problem: str) -> None:
    if record["problem"] != problem:
        raise ValueError(f"record {record['run_id']} is a {record['problem']} run, not {problem}")


def storage_schedules_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Rows for gold.storage_schedules from a storage_dispatch run record."""
    _expect(record, "storage_dispatch")
    out = record["outputs"]
    minutes = record["inputs"]["interval_minutes"]
    rows = [
        {
            "run_id": record["run_id"],
            "org_id": record["org_id"],
            "asset_id": out["asset_id"],
            "interval_index": iv["index"],
            "interval_start": iv["start"],
            "interval_minutes": minutes,
            "price": iv["price"],
            "charge_mw": iv["charge_mw"],
            "discharge_mw": iv["discharge_mw"],
            "net_mw": iv["net_mw"],
            "soc_mwh": iv["soc_mwh"],
            "revenue": iv["revenue"],
            "energy_value": iv["energy_value"],
            "binding": ",".join(iv["binding"]),
            "rationale": iv["rationale"],
        }
        for iv in out["intervals"]
    ]
    frame = pd.DataFrame(rows, columns=STORAGE_SCHEDULE_COLUMNS)
    frame["interval_start"] = pd.to_datetime(frame["interval_start"], utc=True)
    return frame


def bid_curves_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Rows for gold.bid_curves (one row per curve step) from a bid_curves run record."""
    _expect(record, "bid_curves")
    out = record["outputs"]
    rows = [
        {
            "run_id": record["run_id"],
            "org_id": record["org_id"],
            "zone": out["zone"],
            "market": out["market"],
            "currency": out["currency"],
            "asset_id": c["asset_id"],
            "asset_type": c["asset_type"],
            "hour": c["hour"],
            "delivery_start": c["delivery_start"],
            "step": i,
            "price": st["price"],
            "quantity_mw": st["quantity_mw"],
        }
        for c in out["curves"]
        for i, st in enumerate(c["steps"])
    ]
    frame = pd.DataFrame(rows, columns=BID_CURVE_COLUMNS)
    frame["delivery_start"] = pd.to_datetime(frame["delivery_start"], utc=True)
    return frame


def unit_commitment_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Rows for gold.unit_commitment (one row per unit and hour) from a unit_commitment run record."""
    _expect(record, "unit_commitment")
    out = record["outputs"]
    price = {s["hour"]: s["marginal_price"] for s in out["system"]}
    rows = [
        {
            "run_id": record["run_id"],
            "org_id": record["org_id"],
            "unit_id": u["unit_id"],
            "hour": u["hour"],
            "hour_start": u["start"],
            "is_on": u["on"],
            "started": u["started"],
            "output_mw": u["output_mw"],
            "cost": u["cost"],
            "marginal_price": price.get(u["hour"]),
        }
        for u in out["units"]
    ]
    frame = pd.DataFrame(rows, columns=UNIT_COMMITMENT_COLUMNS)
    frame["hour_start"] = pd.to_datetime(frame["hour_start"], utc=True)
    return frame
