"""Fixed-length embeddings of optimization runs' inputs, nearest-run search, and warm starts from a neighbour.

What belongs here: the embedding (a pure function of a run's input), the exact-scan ranking used where the
database has no pgvector, and turning a similar past run's solution into a warm start of a new solve. The
SQL that stores and searches embeddings is `ml.optimization.warehouse` (and the API's similar-runs router).

Embedding, version `EMBEDDING_VERSION`, `EMBEDDING_DIM` = 32 floats, compared by cosine distance:
    [0:24]  shape of the series that drives the problem: the price forecast (storage dispatch), the median
            price-quantile path (bid curves) or the load forecast (unit commitment), linearly resampled to 24
            points over the horizon, standardised (zero mean, unit variance; all zeros when flat) and scaled
            by 1/sqrt(24), so the block has unit norm: two days with the same shape are close whatever their
            level.
    [24:28] level and size, each squashed into about [-1, 1]:
            24 level        tanh(mean / 100)    (currency/MWh; for unit commitment: mean load / capacity)
            25 volatility   tanh(std / max(|mean|, 1))
            26 horizon      log1p(hours) / log1p(168)
            27 resolution   interval minutes / 60 (1 for the hourly problems)
    [28:32] asset parameters and constraints of the problem:
            storage dispatch  tanh(duration h / 8), round-trip efficiency, SoC window (max - min),
                              terminal SoC - initial SoC
            bid curves        tanh(#renewables / 5), tanh(#thermal / 5), tanh(#storage / 5),
                              tanh(#quantile paths / 5)
            unit commitment   tanh(#units / 10), tanh(capacity / peak (load + reserve) - 1),
                              tanh(std / mean of marginal costs), reserve / load
The scalar blocks carry weight 0.5 (the shape block weight 1), so shape dominates and size separates ties.
Runs are only compared within one problem (the blocks [28:32] mean different things per problem).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from ml.optimization.bidding import BidCurveInput
from ml.optimization.storage import StorageDispatchInput
from ml.optimization.unit_commitment import UnitCommitmentInput

EMBEDDING_VERSION = 1
EMBEDDING_DIM = 32
SHAPE_POINTS = 24
SCALAR_WEIGHT = 0.5


def _shape(series: Sequence[float]) -> np.ndarray:
    values = np.asarray(series, dtype=float)
    if len(values) == 1:
        values = np.repeat(values, 2)
    resampled = np.interp(np.linspace(0, len(values) - 1, SHAPE_POINTS), np.arange(len(values)), values)
    std = resampled.std()
    if std < 1e-9:
        return np.zeros(SHAPE_POINTS)
    return (resampled - resampled.mean()) / std / math.sqrt(SHAPE_POINTS)


def _level(series: Sequence[float], scale: float = 100.0) -> list[float]:
    values = np.asarray(series, dtype=float)
    mean, std = float(values.mean()), float(values.std())
    return [math.tanh(mean / scale), math.tanh(std / max(abs(mean), 1.0))]


def _horizon(hours: float, resolution_h: float) -> list[float]:
    return [math.log1p(hours) / math.log1p(168.0), resolution_h]


def _storage(inp: StorageDispatchInput) -> tuple[np.ndarray, list[float]]:
    a = inp.asset
    hours = len(inp.price_forecast) * inp.dt_hours
    scalars = [
        *_level(inp.price_forecast),
        *_horizon(hours, inp.dt_hours),
        math.tanh(a.energy_mwh / a.power_mw / 8.0),
        a.round_trip_efficiency,
        a.max_soc - a.min_soc,
        a.terminal_soc - a.initial_soc,
    ]
    return _shape(inp.price_forecast), scalars


def _bids(inp: BidCurveInput) -> tuple[np.ndarray, list[float]]:
    median = min(inp.price_quantiles, key=lambda q: abs(q.level - 0.5)).prices
    scalars = [
        *_level(median),
        *_horizon(len(median), 1.0),
        math.tanh(len(inp.renewables) / 5),
        math.tanh(len(inp.thermal) / 5),
        math.tanh(len(inp.storage) / 5),
        math.tanh(len(inp.price_quantiles) / 5),
    ]
    return _shape(median), scalars


def _unit_commitment(inp: UnitCommitmentInput) -> tuple[np.ndarray, list[float]]:
    load = np.asarray(inp.load_forecast_mw, dtype=float)
    reserve = np.asarray(inp.reserve(), dtype=float)
    capacity = sum(u.max_output_mw for u in inp.units)
    costs = np.asarray([u.marginal_cost for u in inp.units], dtype=float)
    mean_load = float(load.mean())
    scalars = [
        math.tanh(mean_load / max(capacity, 1e-9)),
        math.tanh(float(load.std()) / max(abs(mean_load), 1.0)),
        *_horizon(len(load), 1.0),
        math.tanh(len(inp.units) / 10),
        math.tanh(capacity / max(float((load + reserve).max()), 1e-9) - 1.0),
        math.tanh(float(costs.std()) / max(abs(float(costs.mean())), 1.0)),
        float(reserve.sum() / max(load.sum(), 1e-9)),
    ]
    return _shape(load), scalars


def run_embedding(inp: BaseModel) -> list[float]:
    """The `EMBEDDING_DIM` floats describing an optimization input (see the module docstring)."""
    if isinstance(inp, StorageDispatchInput):
        shape, scalars = _storage(inp)
    elif isinstance(inp, BidCurveInput):
        shape, scalars = _bids(inp)
    elif isinstance(inp, UnitCommitmentInput):
        shape, scalars = _unit_commitment(inp)
    else:
        raise TypeError(f"not an optimization input: {type(inp).__name__}")
    vector = np.concatenate([shape, SCALAR_WEIGHT * np.asarray(scalars, dtype=float)])
    assert vector.shape == (EMBEDDING_DIM,)
    return [float(x) for x in vector]


def cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """1 - cosine similarity (pgvector's `<=>`); 1 when either vector is all zeros."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return 1.0 if norm == 0 else float(1.0 - x @ y / norm)


def nearest_by_exact_scan(
    query: Sequence[float], candidates: Sequence[tuple[str, Sequence[float]]], k: int
) -> list[tuple[str, float]]:
    """The `k` (run_id, cosine distance) of `candidates` nearest to `query`, nearest first (ties by run_id)."""
    scored = [(run_id, cosine_distance(query, vector)) for run_id, vector in candidates]
    return sorted(scored, key=lambda item: (item[1], item[0]))[:k]


def commitment_warm_start(inp: UnitCommitmentInput, neighbour_outputs: dict[str, Any]) -> dict[str, list[int]]:
    """The on/off schedule of a similar past unit commitment, aligned to `inp`, as a warm start.

    Units are matched by `unit_id`; the remaining units, cheapest first, take the neighbour's remaining
    schedules in its order. Hours beyond the neighbour's horizon repeat its last hour. Empty when the
    neighbour has no schedule. A warm start only guides the solver: the solution is still optimal for `inp`.
    """
    rows = neighbour_outputs.get("units") or []
    schedule: dict[str, dict[int, int]] = {}
    for row in rows:
        schedule.setdefault(str(row["unit_id"]), {})[int(row["hour"])] = int(bool(row["on"]))
    if not schedule:
        return {}
    hours = inp.hours
    by_id = {uid: [plan.get(min(t, max(plan)), 0) for t in range(hours)] for uid, plan in schedule.items()}
    unmatched = [u for u in sorted(inp.units, key=lambda u: u.marginal_cost) if u.unit_id not in by_id]
    spare = [uid for uid in by_id if uid not in {u.unit_id for u in inp.units}]
    out = {u.unit_id: by_id[u.unit_id] for u in inp.units if u.unit_id in by_id}
    for unit, uid in zip(unmatched, spare, strict=False):
        out[unit.unit_id] = by_id[uid]
    return out
