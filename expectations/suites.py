"""What each bronze, silver and gold table promises, as Great Expectations suites built in code.

A suite is built per validation from `SuiteParameters`, because several promises depend on context:
price bounds come from the market rules in `silver.ref__zones` (floor/cap, which allow negative prices and
spikes to the cap) rather than from what looks normal; the row count is compared with the previous
partition's; freshness needs a clock. Checks GX has no vectorised expectation for (per-zone bounds,
series continuity) are expressed on helper columns that `prepare` adds, so every check stays one pass
over a pandas column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from infra.db import TRADING_TABLES

# Helper columns `prepare` adds; their names start with "_gx_" so they never clash with table columns.
PRICE_FLOOR = "_gx_price_floor"
PRICE_CAP = "_gx_price_cap"
STEP_MINUTES = "_gx_step_minutes"
# Real-time feeds drop the odd interval; every gap is flagged per series in silver.quality__gaps, and the suite
# fails a batch only when more than 1 % of its steps are broken (a feed outage, a wrong interval).
CONTINUITY_MOSTLY = 0.99
RATIO_VALUE = "_gx_ratio_value"
NON_STORAGE_GENERATION = "_gx_non_storage_generation_mw"

MARKETS = ["DA", "RT"]
INTERVALS = [1, 5, 15, 30, 60]
BID_SIDES = ["buy", "sell"]
BID_STATUSES = ["submitted", "accepted", "partially_accepted", "rejected", "cancelled"]
CDC_OPS = ["c", "u", "d", "r", "t"]
STORAGE_FUELS = {"battery", "storage", "pumped_storage"}
RATIO_KPIS = {"price_coverage", "load_factor", "renewable_share", "bid_acceptance_rate"}
GRAINS = ["minute", "hour", "day"]


@dataclass(frozen=True)
class SuiteParameters:
    """Context a suite is built with; every field is optional and its check is skipped when unset."""

    zones: pd.DataFrame | None = None  # silver.ref__zones: zone, price_floor, price_cap
    previous_row_count: int | None = None
    max_row_count_change: float = 0.5  # allowed relative change vs the previous partition
    # The window holds a market day still under way (today's ticks): its rows keep arriving, so only growth
    # beyond the previous partition's count is bounded.
    day_in_progress: bool = False
    # A previous partition smaller than this (a first, partial day) says nothing about the next one.
    min_previous_rows: int = 100
    # Current-state tables (trading) may legitimately hold no row in a window; partitions may not.
    min_rows: int = 1
    now: datetime | None = None
    max_age: timedelta | None = None
    kpi_codes: Sequence[str] | None = None


@dataclass(frozen=True)
class TableSuite:
    """The promises of one table: its columns, key, time column and extra expectations."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()
    nullable_key: frozenset[str] = frozenset()
    time_column: str | None = None
    series: tuple[str, ...] = ()  # columns identifying one time series, for continuity
    extra: Callable[[SuiteParameters], list[gxe.Expectation]] = field(default=lambda p: [])
    prepare_extra: Callable[[pd.DataFrame, SuiteParameters], pd.DataFrame] | None = None

    @property
    def name(self) -> str:
        return self.table.replace(".", "__")

    def expectations(self, params: SuiteParameters) -> list[gxe.Expectation]:
        """Every expectation of the table under `params`."""
        found: list[gxe.Expectation] = [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(self.columns), exact_match=False)
        ]
        found += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in self.key if c not in self.nullable_key]
        if len(self.key) == 1:  # GX's compound expectation refuses a single column
            found.append(gxe.ExpectColumnValuesToBeUnique(column=self.key[0]))
        elif self.key:
            found.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(self.key)))
        found.append(_row_count_expectation(params))
        if self.time_column and params.now is not None and params.max_age is not None:
            found.append(
                gxe.ExpectColumnMaxToBeBetween(
                    column=self.time_column, min_value=(params.now - params.max_age).isoformat()
                )
            )
        if self.series:
            found.append(
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A=STEP_MINUTES,
                    column_B="interval_minutes",
                    ignore_row_if="either_value_is_missing",
                    mostly=CONTINUITY_MOSTLY,
                )
            )
        return found + self.extra(params)

    def prepare(self, df: pd.DataFrame, params: SuiteParameters) -> pd.DataFrame:
        """`df` plus the helper columns the expectations read (the input is not modified)."""
        out = df.copy(deep=False)
        if self.series and self.time_column and set(self.series) <= set(df.columns):
            out[STEP_MINUTES] = step_minutes(df, list(self.series), self.time_column)
        if self.prepare_extra is not None:
            out = self.prepare_extra(out, params)
        return out


def _row_count_expectation(params: SuiteParameters) -> gxe.Expectation:
    if params.previous_row_count is None or params.previous_row_count < params.min_previous_rows:
        return gxe.ExpectTableRowCountToBeBetween(min_value=params.min_rows)
    change = params.max_row_count_change
    shrink = 1.0 if params.day_in_progress else change
    return gxe.ExpectTableRowCountToBeBetween(
        min_value=max(params.min_rows, math.floor(params.previous_row_count * (1 - shrink))),
        max_value=math.ceil(params.previous_row_count * (1 + change)),
    )


def step_minutes(df: pd.DataFrame, series: list[str], time_column: str) -> pd.Series:
    """Minutes since the previous point of the same series (NaN for a series' first point).

    Series are reduced to one integer code (NULL is a value of its own, as in the silver unique keys) and
    ordered with one `lexsort`: on millions of rows this is an order of magnitude faster than sorting the
    key columns or `groupby().diff()`.
    """
    if df.empty:
        return pd.Series(np.nan, index=df.index, dtype="float64")
    code = np.zeros(len(df), dtype=np.int64)
    for column in series:
        codes, uniques = pd.factorize(df[column], use_na_sentinel=False)
        code = code * (len(uniques) + 1) + codes
    ts = pd.to_datetime(df[time_column], utc=True).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    order = np.lexsort((ts, code))
    ordered_ts = ts[order]
    ordered_code = code[order]
    steps = np.empty(len(df), dtype="float64")
    steps[0] = np.nan
    steps[1:] = (ordered_ts[1:] - ordered_ts[:-1]) / 60e9
    steps[1:][ordered_code[1:] != ordered_code[:-1]] = np.nan
    result = np.empty(len(df), dtype="float64")
    result[order] = steps
    return pd.Series(result, index=df.index)


def with_price_bounds(
    df: pd.DataFrame, params: SuiteParameters, price_columns: Sequence[str] = ("price",)
) -> pd.DataFrame:
    """`df` with each row's market floor and cap (NaN for zones missing from the reference)."""
    if params.zones is None or "zone" not in df.columns:
        return df
    zones = params.zones.set_index("zone")
    df[PRICE_FLOOR] = df["zone"].map(zones["price_floor"]).astype("float64")
    df[PRICE_CAP] = df["zone"].map(zones["price_cap"]).astype("float64")
    return df


def _price_bound_expectations(
    params: SuiteParameters, low: str = "price", high: str = "price"
) -> list[gxe.Expectation]:
    if params.zones is None:
        return []
    return [
        gxe.ExpectColumnValuesToBeInSet(column="zone", value_set=sorted(params.zones["zone"].astype(str))),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=low, column_B=PRICE_FLOOR, or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=PRICE_CAP, column_B=high, or_equal=True),
    ]


# --- bronze ----------------------------------------------------------------------------------------

_LINEAGE = ("_ingested_at", "_batch_id")
_FILE_LINEAGE = (*_LINEAGE, "_upload_id", "_file_name", "_row_number")
_KAFKA_COORDS = ("_topic", "_partition", "_offset")


def _not_null(*columns: str) -> Callable[[SuiteParameters], list[gxe.Expectation]]:
    return lambda params: [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _bronze_prices_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        *_not_null("ts_utc", "zone", "price", "_batch_id", "_ingested_at")(params),
        gxe.ExpectColumnValuesToBeInSet(column="market", value_set=MARKETS),
        gxe.ExpectColumnValuesToBeInSet(column="interval_minutes", value_set=INTERVALS),
    ]


def _cdc_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        *_not_null("op", "key", "source_ts_ms", "_ingested_at")(params),
        gxe.ExpectColumnValuesToBeInSet(column="op", value_set=CDC_OPS),
    ]


BRONZE_SUITES = [
    TableSuite(
        "bronze.files__prices",
        ("ts_utc", "zone", "market", "interval_minutes", "price", "currency", "source_tz", *_FILE_LINEAGE),
        key=("_upload_id", "_row_number", "_sheet"),
        nullable_key=frozenset({"_sheet"}),
        extra=_bronze_prices_extra,
    ),
    TableSuite(
        "bronze.files__load",
        ("ts_utc", "zone", "interval_minutes", "load_mw", *_FILE_LINEAGE),
        extra=_not_null("ts_utc", "zone", "load_mw", "_batch_id"),
    ),
    TableSuite(
        "bronze.ticks__prices",
        ("zone", "node", "ts_utc", "market", "interval_minutes", "price", "currency", *_KAFKA_COORDS),
        key=_KAFKA_COORDS,
        extra=_bronze_prices_extra,
    ),
    *[
        TableSuite(
            f"bronze.cdc__{entity}",
            ("op", "key", "source_ts_ms", "source_table", "after_json", *_LINEAGE, *_KAFKA_COORDS),
            key=_KAFKA_COORDS,
            extra=_cdc_extra,
        )
        for entity in TRADING_TABLES
    ],
]

# --- silver ----------------------------------------------------------------------------------------

_SILVER_SERIES_META = ("org_id", "revision", "is_gap_filled", "source")


def _silver_prices_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="price"),
        gxe.ExpectColumnValuesToNotBeNull(column="market_date"),
        gxe.ExpectColumnValuesToBeInSet(column="market", value_set=MARKETS),
        gxe.ExpectColumnValuesToBeInSet(column="interval_minutes", value_set=INTERVALS),
        *_price_bound_expectations(params),
    ]


def _silver_load_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="load_mw"),
        gxe.ExpectColumnValuesToNotBeNull(column="market_date"),
        gxe.ExpectColumnValuesToBeBetween(column="load_mw", min_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="interval_minutes", value_set=INTERVALS),
    ]


def _silver_generation_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    # Storage discharges negative while charging; every other fuel generates >= 0.
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="generation_mw"),
        gxe.ExpectColumnValuesToBeBetween(column=NON_STORAGE_GENERATION, min_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="interval_minutes", value_set=INTERVALS),
    ]


def _non_storage_generation(df: pd.DataFrame, params: SuiteParameters) -> pd.DataFrame:
    if {"fuel", "generation_mw"} <= set(df.columns):
        storage = df["fuel"].astype("string").str.lower().isin(STORAGE_FUELS)
        df[NON_STORAGE_GENERATION] = df["generation_mw"].where(~storage)
    return df


def _silver_weather_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToBeBetween(column="temperature_c", min_value=-90, max_value=60),
        gxe.ExpectColumnValuesToBeBetween(column="wind_speed_ms", min_value=0, max_value=120),
        gxe.ExpectColumnValuesToBeBetween(column="irradiance_wm2", min_value=0, max_value=1500),
    ]


def _silver_bids_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        *_not_null("zone", "delivery_start", "side", "price", "quantity_mw", "status")(params),
        gxe.ExpectColumnValuesToBeInSet(column="side", value_set=BID_SIDES),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=BID_STATUSES),
        gxe.ExpectColumnValuesToBeBetween(column="quantity_mw", min_value=0, strict_min=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="quantity_mw",
            column_B="cleared_quantity_mw",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        *_price_bound_expectations(params),
    ]


def _silver_trades_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        *_not_null("zone", "delivery_start", "side", "price", "quantity_mw")(params),
        gxe.ExpectColumnValuesToBeInSet(column="side", value_set=BID_SIDES),
        gxe.ExpectColumnValuesToBeBetween(column="quantity_mw", min_value=0, strict_min=True),
        *_price_bound_expectations(params),
    ]


SILVER_SUITES = [
    TableSuite(
        "silver.market__prices",
        (
            "ts_utc",
            "market_date",
            "zone",
            "node",
            "market",
            "interval_minutes",
            "price",
            "currency",
            *_SILVER_SERIES_META,
        ),
        key=("zone", "node", "market", "interval_minutes", "ts_utc", "org_id"),
        nullable_key=frozenset({"node", "org_id"}),
        time_column="ts_utc",
        series=("zone", "node", "market", "interval_minutes", "org_id"),
        extra=_silver_prices_extra,
        prepare_extra=with_price_bounds,
    ),
    TableSuite(
        "silver.market__load",
        ("ts_utc", "market_date", "zone", "interval_minutes", "load_mw", *_SILVER_SERIES_META),
        key=("zone", "interval_minutes", "ts_utc", "org_id"),
        nullable_key=frozenset({"org_id"}),
        time_column="ts_utc",
        series=("zone", "interval_minutes", "org_id"),
        extra=_silver_load_extra,
    ),
    TableSuite(
        "silver.market__generation",
        ("ts_utc", "market_date", "zone", "fuel", "interval_minutes", "generation_mw", *_SILVER_SERIES_META),
        key=("zone", "fuel", "interval_minutes", "ts_utc", "org_id"),
        nullable_key=frozenset({"org_id"}),
        time_column="ts_utc",
        series=("zone", "fuel", "interval_minutes", "org_id"),
        extra=_silver_generation_extra,
        prepare_extra=_non_storage_generation,
    ),
    TableSuite(
        "silver.market__weather",
        (
            "ts_utc",
            "market_date",
            "zone",
            "interval_minutes",
            "temperature_c",
            "wind_speed_ms",
            "irradiance_wm2",
            *_SILVER_SERIES_META,
        ),
        key=("zone", "ts_utc", "org_id"),
        nullable_key=frozenset({"org_id"}),
        time_column="ts_utc",
        series=("zone", "interval_minutes", "org_id"),
        extra=_silver_weather_extra,
    ),
    TableSuite(
        "silver.trading__bids",
        (
            "bid_id",
            "org_id",
            "asset_id",
            "zone",
            "delivery_start",
            "side",
            "price",
            "quantity_mw",
            "status",
            "cleared_quantity_mw",
            "cleared_price",
            "updated_at",
        ),
        key=("bid_id",),
        extra=lambda p: [gxe.ExpectColumnValuesToNotBeNull(column="org_id"), *_silver_bids_extra(p)],
        prepare_extra=with_price_bounds,
    ),
    TableSuite(
        "silver.trading__trades",
        (
            "trade_id",
            "org_id",
            "bid_id",
            "zone",
            "delivery_start",
            "side",
            "price",
            "quantity_mw",
            "counterparty",
            "traded_at",
        ),
        key=("trade_id",),
        extra=lambda p: [gxe.ExpectColumnValuesToNotBeNull(column="org_id"), *_silver_trades_extra(p)],
        prepare_extra=with_price_bounds,
    ),
]

# --- gold ------------------------------------------------------------------------------------------


def _gold_prices_hourly_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToBeBetween(column="n_obs", min_value=1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="price_avg", column_B="price_min", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="price_max", column_B="price_avg", or_equal=True),
        *_price_bound_expectations(params, low="price_min", high="price_max"),
    ]


def _kpi_extra(params: SuiteParameters) -> list[gxe.Expectation]:
    found = [
        gxe.ExpectColumnValuesToNotBeNull(column="value"),
        gxe.ExpectColumnValuesToNotBeNull(column="market_date"),
        gxe.ExpectColumnValuesToBeInSet(column="grain", value_set=GRAINS),
        gxe.ExpectColumnValuesToBeBetween(column=RATIO_VALUE, min_value=0, max_value=1),
    ]
    if params.kpi_codes is not None:
        found.append(gxe.ExpectColumnValuesToBeInSet(column="kpi_code", value_set=list(params.kpi_codes)))
    return found


def _ratio_values(df: pd.DataFrame, params: SuiteParameters) -> pd.DataFrame:
    if {"kpi_code", "value"} <= set(df.columns):
        df[RATIO_VALUE] = df["value"].where(df["kpi_code"].isin(RATIO_KPIS))
    return df


GOLD_SUITES = [
    TableSuite(
        "gold.fct_prices_hourly",
        (
            "zone",
            "ts_utc",
            "market_date",
            "market",
            "currency",
            "price_avg",
            "price_min",
            "price_max",
            "n_obs",
        ),
        key=("zone", "market", "org_id", "ts_utc"),
        nullable_key=frozenset({"org_id"}),
        extra=_gold_prices_hourly_extra,
        prepare_extra=with_price_bounds,
    ),
    TableSuite(
        "gold.fct_load_hourly",
        ("zone", "ts_utc", "market_date", "load_mw_avg", "load_mw_max", "n_obs"),
        key=("zone", "org_id", "ts_utc"),
        nullable_key=frozenset({"org_id"}),
        extra=lambda p: [gxe.ExpectColumnValuesToBeBetween(column="load_mw_avg", min_value=0)],
    ),
    TableSuite(
        "gold.kpi_values",
        ("kpi_code", "grain", "zone", "org_id", "period_start", "market_date", "value"),
        key=("kpi_code", "grain", "zone", "org_id", "period_start"),
        nullable_key=frozenset({"org_id", "zone"}),
        extra=_kpi_extra,
        prepare_extra=_ratio_values,
    ),
]

SUITES: Mapping[str, TableSuite] = {s.table: s for s in (*BRONZE_SUITES, *SILVER_SUITES, *GOLD_SUITES)}


def suite_for(table: str) -> TableSuite:
    """The suite of `layer.table`; a KeyError names the tables that have one."""
    try:
        return SUITES[table]
    except KeyError:
        raise KeyError(f"no expectation suite for {table!r}; suites exist for {sorted(SUITES)}") from None
