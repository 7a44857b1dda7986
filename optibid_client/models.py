"""What the OptiBid API answers, as typed Python structures (the API's OpenAPI document is the authority).

Rows are `TypedDict`s with every key optional, because `fields=` selects columns; timestamps and dates are
ISO 8601 strings exactly as the API sends them. A page is `Page[Row]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar

RowT = TypeVar("RowT")
ExportFormat = Literal["csv", "parquet", "xlsx"]
Grain = Literal["minute", "hour", "day"]


@dataclass(frozen=True)
class Page(Generic[RowT]):
    """One page of a tabular endpoint; pass `next_cursor` as `cursor` for the next (None on the last)."""

    data: list[RowT]
    next_cursor: str | None
    count: int


class PriceRow(TypedDict, total=False):
    zone: str
    node: str
    ts_utc: str
    market_date: str
    market: str
    currency: str
    price: float | None
    price_avg: float | None
    price_min: float | None
    price_max: float | None
    n_obs: int | None


class SeriesRow(TypedDict, total=False):
    zone: str
    ts_utc: str
    market_date: str
    load_mw_avg: float | None
    fuel: str
    generation_mw_avg: float | None


class KpiValueRow(TypedDict, total=False):
    kpi_code: str
    grain: str
    zone: str
    org_id: str | None
    period_start: str
    market_date: str
    value: float | None


class ForecastRow(TypedDict, total=False):
    zone: str
    ts_utc: str
    target: str
    model: str
    model_version: str | None
    run_id: str
    y_hat: float | None
    q10: float | None
    q50: float | None
    q90: float | None
    lo80: float | None
    hi80: float | None
    lo95: float | None
    hi95: float | None
    created_at: str


class BidRow(TypedDict, total=False):
    bid_id: str
    org_id: str
    asset_id: str | None
    zone: str
    delivery_start: str
    market_date: str
    side: Literal["buy", "sell"]
    price: float | None
    quantity_mw: float | None
    status: str
    is_accepted: bool
    is_decided: bool
    cleared_quantity_mw: float
    cleared_price: float | None
    cash_flow: float
    currency: str
    updated_at: str | None


class TradeRow(TypedDict, total=False):
    trade_id: str
    org_id: str
    bid_id: str | None
    zone: str
    delivery_start: str
    market_date: str
    side: Literal["buy", "sell"]
    price: float | None
    quantity_mw: float | None
    signed_quantity_mw: float | None
    cash_flow: float | None
    currency: str
    counterparty: str | None
    traded_at: str | None


class PositionRow(TypedDict, total=False):
    org_id: str
    zone: str
    delivery_start: str
    market_date: str
    bought_mwh: float
    sold_mwh: float
    net_position_mwh: float
    cash_flow: float


class AnomalyRow(TypedDict, total=False):
    zone: str
    ts_utc: str
    target: Literal["price", "load"]
    kind: Literal["spike", "level_shift"]
    score: float
    value: float | None
    expected: float | None
    method: str
    market_date: str
    detected_at: str


class BacktestRow(TypedDict, total=False):
    run_id: str
    zone: str
    target: Literal["price", "load"]
    window_start: str
    window_end: str
    models: list[str]
    metrics: dict[str, dict[str, float | None]]
    mlflow_run_id: str | None
    wall_seconds: float | None
    created_at: str


class ModelSelectionRow(TypedDict, total=False):
    zone: str
    target: Literal["price", "load"]
    model: str
    selected_at: str
    backtest_run_id: str
    metric: str
    metric_value: float | None
    mlflow_run_id: str | None
    registry_version: str | None


class DriftSummaryRow(TypedDict, total=False):
    zone: str
    reference_start: str
    current_start: str
    current_end: str
    drift_share: float
    n_drifted: int
    n_columns: int
    dataset_drift: bool
    target_drift: bool
    error_drift: bool | None
    drifted_columns: str
    computed_at: str


class KpiValue(TypedDict):
    period_start: str
    market_date: str
    value: float | None


@dataclass(frozen=True)
class KpiMessage:
    """A push of a KPI stream: new values of one KPI, zone and grain (`backlog` when resumed from `since`)."""

    kpi_code: str
    zone: str
    grain: Grain
    values: list[KpiValue]
    backlog: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kpi_code, self.zone, self.grain)


@dataclass(frozen=True)
class KpiStream:
    """One KPI of a dashboard subscription; `since` is the last period the client has (resume after it)."""

    kpi_code: str
    zone: str
    grain: Grain = "hour"
    since: str | None = None

    def spec(self) -> str:
        return ",".join([self.kpi_code, self.zone, self.grain, *([self.since] if self.since else [])])


ForecastJobStatus = Literal["queued", "running", "succeeded", "failed", "timed_out"]


@dataclass(frozen=True)
class ForecastJob:
    """An on-demand forecast job (`POST /forecasts`, `GET /forecasts/jobs/{id}`); `result["rows"]` holds the
    forecast hours when it succeeded, `error` names the field when it failed."""

    job_id: str
    status: ForecastJobStatus
    time_limit_s: float
    request: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "timed_out")

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ForecastJob:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in body.items() if k in known})
