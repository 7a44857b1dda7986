"""OptiBid optimization library: storage dispatch, day-ahead bid curves, unit commitment (no Dagster here).

Public API — each problem has a pydantic v2 input model (invalid input raises `pydantic.ValidationError`
whose message names the field), one solve function and a result model; every solve takes a `SolveOptions`
(default 2 s hard time limit, relative MIP gap 0.1 %).

Storage (`ml.optimization.storage`)
    StorageAsset, StorageDispatchInput(asset, price_forecast, interval_minutes, start, horizon_hours,
        price_quantiles, risk=RiskSettings(alpha, weight))
    solve_storage_dispatch(inp, options) -> StorageSchedule      # MILP; LP first, binaries only where needed
        StorageSchedule.intervals[*]: charge/discharge/net MW, SoC, revenue, energy_value (dual), binding,
        rationale text; expected_revenue, cvar_loss (risk-aware when inp.risk is set), info: SolveInfo
    storage_schedule_violations(inp, schedule) -> list[str]      # empty when every constraint holds
    schedule_revenue(inp, net_mw, discharge_mw, prices) -> float

Bid curves (`ml.optimization.bidding`, rules in `ml.optimization.markets`)
    BidCurveInput(zone, delivery_start, price_quantiles, renewables, thermal, storage)
    build_bid_curves(inp, options) -> BidCurveResult            # every curve validated before it is returned
    bid_curve_violations(curve, rules) -> list[str]
    MARKET_RULES, ZONE_MARKETS, market_rules_for(zone_or_market) -> MarketRules

Unit commitment (`ml.optimization.unit_commitment`, unit model in `ml.optimization.thermal`)
    ThermalUnit, UnitCommitmentInput(load_forecast_mw, reserve_mw | reserve_fraction, units, ...)
    solve_unit_commitment(inp, options) -> UnitCommitmentResult  # .diagnostics name binding rows
    infeasibility_diagnostics(inp), unit_commitment_violations(inp, result)

Runs and tables (`ml.optimization.runs`, DDL in infra/sql/070_optimization.sql)
    run_record(inp, result, options, org_id=, run_id=) -> dict  # JSON-serialisable, for ml.optimization_runs
    resolve_run_record(record) -> result; record_input(record); record_result(record); solve(inp, options)
    optimization_runs_frame(records), storage_schedules_frame(record), bid_curves_frame(record),
    unit_commitment_frame(record) -> pandas DataFrames with the tables' columns

Stored runs (`ml.optimization.warehouse`: writes; `ml.optimization.delivery_day`: the assets' day loop)
    run_insert_statement(), run_params(record)   # one ml.optimization_runs row, sync or async connections

Similar runs (`ml.optimization.embedding`; stored with every run by `run_insert_statement` / `insert_runs`)
    run_embedding(inp) -> 32 floats (EMBEDDING_DIM, EMBEDDING_VERSION; layout in the module docstring)
    nearest_by_exact_scan(query, candidates, k), cosine_distance(a, b)
    commitment_warm_start(inp, neighbour_outputs) -> SolveOptions.warm_start_commitment

Explain and backtest
    storage_schedule_png(schedule, path=None) -> PNG bytes       (`ml.optimization.explain`)
    load_epf_prices(path), backtest_storage(prices, asset, ...), backtest_summary(daily)  (`.backtest`)
"""

from ml.optimization.bidding import (
    BidCurve,
    BidCurveInput,
    BidCurveResult,
    BidStep,
    RenewableGenerator,
    bid_curve_violations,
    build_bid_curves,
)
from ml.optimization.common import SolveInfo, SolveOptions, SolveStatus
from ml.optimization.embedding import (
    EMBEDDING_DIM,
    EMBEDDING_VERSION,
    commitment_warm_start,
    cosine_distance,
    nearest_by_exact_scan,
    run_embedding,
)
from ml.optimization.markets import MARKET_RULES, ZONE_MARKETS, MarketRules, market_rules_for
from ml.optimization.runs import (
    bid_curves_frame,
    optimization_runs_frame,
    record_input,
    record_result,
    resolve_run_record,
    run_record,
    solve,
    storage_schedules_frame,
    unit_commitment_frame,
)
from ml.optimization.storage import (
    PriceQuantile,
    RiskSettings,
    StorageAsset,
    StorageDispatchInput,
    StorageSchedule,
    schedule_revenue,
    solve_storage_dispatch,
    storage_schedule_violations,
)
from ml.optimization.thermal import ThermalUnit
from ml.optimization.unit_commitment import (
    InfeasibilityDiagnostic,
    UnitCommitmentInput,
    UnitCommitmentResult,
    infeasibility_diagnostics,
    solve_unit_commitment,
    unit_commitment_violations,
)
from ml.optimization.warehouse import run_insert_statement, run_params

__all__ = [
    "EMBEDDING_DIM",
    "EMBEDDING_VERSION",
    "MARKET_RULES",
    "ZONE_MARKETS",
    "BidCurve",
    "BidCurveInput",
    "BidCurveResult",
    "BidStep",
    "InfeasibilityDiagnostic",
    "MarketRules",
    "PriceQuantile",
    "RenewableGenerator",
    "RiskSettings",
    "SolveInfo",
    "SolveOptions",
    "SolveStatus",
    "StorageAsset",
    "StorageDispatchInput",
    "StorageSchedule",
    "ThermalUnit",
    "UnitCommitmentInput",
    "UnitCommitmentResult",
    "bid_curve_violations",
    "bid_curves_frame",
    "build_bid_curves",
    "commitment_warm_start",
    "cosine_distance",
    "infeasibility_diagnostics",
    "market_rules_for",
    "nearest_by_exact_scan",
    "optimization_runs_frame",
    "record_input",
    "record_result",
    "resolve_run_record",
    "run_embedding",
    "run_insert_statement",
    "run_params",
    "run_record",
    "schedule_revenue",
    "solve",
    "solve_storage_dispatch",
    "solve_unit_commitment",
    "storage_schedule_violations",
    "storage_schedules_frame",
    "unit_commitment_frame",
    "unit_commitment_violations",
]
