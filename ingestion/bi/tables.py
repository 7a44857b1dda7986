"""The registry of gold tables the BI layer exposes: one place for column lists, types and descriptions.

Everything BI-facing is generated from `TABLES`: the ClickHouse DDL and replication
(`ingestion.bi.clickhouse`), the identifiers the analytics queries accept (`ingestion.bi.analytics`), the
friendly `bi.*` Postgres views with their `COMMENT ON` texts and the row-level-security policies
(`ingestion.bi.access`), and the fallback semantic description (`ingestion.bi.semantic`). The gold tables
themselves are built by dbt (`dbt_project/models/marts/fct_prices_*.sql`, `models/kpi/kpi_values.sql`);
adjust the column lists here when those models change (the replication casts to these types and fails
loudly on a missing column). Prices are in each zone's currency per MWh (the `currency` column), not EUR.

`pg_type` is the type the replication casts to when reading from Postgres (so a `numeric` gold column is
read as `float8`); `ch_type` is the ClickHouse column type (only types 18.16 and current releases share).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Column:
    """One column of a gold table as the BI layer sees it."""

    name: str
    pg_type: str
    ch_type: str
    description: str
    friendly_name: str | None = None  # the column name in the `bi.*` view (default: `name`)
    nullable: bool = False

    @property
    def bi_name(self) -> str:
        return self.friendly_name or self.name

    @property
    def ch_column_type(self) -> str:
        return f"Nullable({self.ch_type})" if self.nullable else self.ch_type


@dataclass(frozen=True)
class Rollup:
    """A ClickHouse materialized-view rollup of a replicated table (AggregatingMergeTree target).

    `keys` are `(alias, ClickHouse expression over the source columns, ClickHouse type)`; `measures` are
    `(alias, aggregate function, source expression, argument ClickHouse type)`; reading uses `<func>Merge`.
    """

    name: str
    description: str
    date_key: str  # the key alias the target table is partitioned by (toYYYYMM of it)
    keys: tuple[tuple[str, str, str], ...]
    measures: tuple[tuple[str, str, str, str], ...]


@dataclass(frozen=True)
class TableSpec:
    """A gold table replicated to ClickHouse and exposed to BI tools."""

    pg_schema: str
    pg_table: str
    ch_table: str
    bi_view: str
    description: str
    grain: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]  # ClickHouse sorting key (no Nullable columns): the common filters first
    unique_key: tuple[str, ...] = ()  # the grain (may hold Nullable columns); default: `order_by`
    date_column: str = "market_date"  # the Dagster daily partition column (Date)
    ts_column: str | None = "ts_utc"
    rollups: tuple[Rollup, ...] = field(default_factory=tuple)

    @property
    def qualified_pg_name(self) -> str:
        return f"{self.pg_schema}.{self.pg_table}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def grain_key(self) -> tuple[str, ...]:
        """The columns that identify a row (NULL counts as a value, as in the dbt uniqueness tests)."""
        return self.unique_key or self.order_by

    @property
    def has_org_column(self) -> bool:
        return "org_id" in self.column_names

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(
            f"{self.qualified_pg_name} has no column {name!r} (known: {', '.join(self.column_names)})"
        )

    def __post_init__(self) -> None:
        names = [self.pg_schema, self.pg_table, self.ch_table, self.bi_view, *self.column_names]
        names += [c.bi_name for c in self.columns] + [r.name for r in self.rollups]
        names += [k[0] for r in self.rollups for k in r.keys] + [
            m[0] for r in self.rollups for m in r.measures
        ]
        bad = [n for n in names if not IDENTIFIER.match(n)]
        if bad:
            raise ValueError(f"invalid identifiers in table spec {self.pg_table}: {bad}")
        for key in (*self.order_by, *self.unique_key, self.date_column):
            self.column(key)
        if any(self.column(k).nullable for k in self.order_by):
            raise ValueError(f"{self.pg_table}: sorting-key columns cannot be Nullable")


_ZONE = Column(
    "zone", "text", "String", "Bidding zone / price area code (e.g. PJM, NP, FR; see dim_zone).", "zone_code"
)
_MARKET_DATE = Column(
    "market_date",
    "date",
    "Date",
    "Delivery day in the zone's local calendar; the daily partition key.",
    "market_day",
)
_MARKET = Column("market", "text", "String", "Market of the price: DA (day-ahead) or RT (real-time).")
_CURRENCY = Column(
    "currency", "text", "String", "ISO currency code of the prices in the row (the zone's currency).", None
)
_ORG = Column(
    "org_id",
    "text",
    "String",
    "Owning organisation for private rows (e.g. uploaded prices); NULL means public market data visible to "
    "every organisation.",
    "organisation_id",
    nullable=True,
)
# Rollup keys cannot be Nullable (sorting key): public rows roll up under org_id ''.
_ORG_KEY = ("org_id", "ifNull(org_id, '')", "String")

FCT_PRICES_HOURLY = TableSpec(
    pg_schema="gold",
    pg_table="fct_prices_hourly",
    ch_table="fct_prices_hourly",
    bi_view="prices_hourly",
    description=(
        "Zone prices per market (DA/RT) and zone-local hour, aggregated from the observations of the hour; "
        "prices are in the row's currency per MWh."
    ),
    grain="one row per zone, market, organisation (NULL = public) and hour",
    columns=(
        _ZONE,
        Column(
            "ts_utc",
            "timestamptz",
            "DateTime('UTC')",
            "Start of the zone-local delivery hour, in UTC.",
            "hour_start_utc",
        ),
        _MARKET_DATE,
        _MARKET,
        _CURRENCY,
        _ORG,
        Column(
            "price_avg",
            "float8",
            "Float64",
            "Mean price of the hour (currency/MWh, see currency).",
            "price_avg_per_mwh",
        ),
        Column(
            "price_min",
            "float8",
            "Float64",
            "Lowest price observed in the hour (currency/MWh).",
            "price_min_per_mwh",
        ),
        Column(
            "price_max",
            "float8",
            "Float64",
            "Highest price observed in the hour (currency/MWh).",
            "price_max_per_mwh",
        ),
        Column(
            "n_obs", "int8", "Int64", "Number of source observations aggregated into the row.", "observations"
        ),
    ),
    order_by=("zone", "market", "ts_utc"),
    unique_key=("zone", "market", "org_id", "ts_utc"),
    rollups=(
        Rollup(
            name="prices_zone_daily",
            description="Daily price statistics per zone, market and organisation ('' = public), "
            "maintained by a materialized view.",
            date_key="market_date",
            keys=(
                ("zone", "zone", "String"),
                ("market", "market", "String"),
                ("currency", "currency", "String"),
                _ORG_KEY,
                ("market_date", "market_date", "Date"),
            ),
            measures=(
                ("price_avg", "avg", "price_avg", "Float64"),
                ("price_min", "min", "price_min", "Float64"),
                ("price_max", "max", "price_max", "Float64"),
                ("n_obs", "sum", "n_obs", "Int64"),
                ("n_hours", "count", "", ""),
            ),
        ),
    ),
)

FCT_PRICES_5MIN = TableSpec(
    pg_schema="gold",
    pg_table="fct_prices_5min",
    ch_table="fct_prices_5min",
    bi_view="prices_5min",
    description=(
        "Five-minute prices as published, at pricing nodes (LMPs) and for whole zones (node NULL); "
        "prices are in the row's currency per MWh."
    ),
    grain="one row per zone, node (NULL = zone price), market, organisation and 5-minute interval",
    columns=(
        Column(
            "node",
            "text",
            "String",
            "Pricing node identifier; NULL for the zone price.",
            "node_code",
            nullable=True,
        ),
        _ZONE,
        Column(
            "ts_utc",
            "timestamptz",
            "DateTime('UTC')",
            "Start of the 5-minute interval (UTC).",
            "interval_start_utc",
        ),
        _MARKET_DATE,
        _MARKET,
        _CURRENCY,
        _ORG,
        Column(
            "price",
            "float8",
            "Float64",
            "Price of the interval (currency/MWh, see currency).",
            "price_per_mwh",
        ),
    ),
    # node is Nullable, so it stays out of the sorting key; the grain check covers it (unique_key)
    order_by=("zone", "market", "ts_utc"),
    unique_key=("zone", "node", "market", "org_id", "ts_utc"),
    rollups=(
        Rollup(
            name="prices_5min_hourly",
            description="Hourly statistics of the five-minute prices per zone, node ('' = zone price), "
            "market and organisation ('' = public), maintained by a materialized view.",
            date_key="market_date",
            keys=(
                ("zone", "zone", "String"),
                ("node", "ifNull(node, '')", "String"),
                ("market", "market", "String"),
                ("currency", "currency", "String"),
                _ORG_KEY,
                ("hour_utc", "toStartOfHour(ts_utc)", "DateTime('UTC')"),
                ("market_date", "market_date", "Date"),
            ),
            measures=(
                ("price_avg", "avg", "price", "Float64"),
                ("price_min", "min", "price", "Float64"),
                ("price_max", "max", "price", "Float64"),
                ("n_obs", "count", "", ""),
            ),
        ),
    ),
)

KPI_VALUES = TableSpec(
    pg_schema="gold",
    pg_table="kpi_values",
    ch_table="kpi_values",
    bi_view="kpi_values",
    description=(
        "Every KPI of the KPI catalog (gold.kpi_catalog: name, unit, definition) per zone, and per "
        "organisation for org KPIs, at minute, hour and day grain."
    ),
    grain="one row per KPI code, grain, zone, organisation (NULL = public) and period start",
    columns=(
        Column(
            "kpi_code",
            "text",
            "String",
            "KPI identifier; see the KPI catalog for name, unit, definition.",
            "kpi",
        ),
        Column("grain", "text", "String", "Period length of the value: minute, hour or day.", "period_grain"),
        _ZONE,
        _ORG,
        Column(
            "period_start",
            "timestamptz",
            "DateTime('UTC')",
            "UTC start of the minute, zone-local hour or zone-local day the value covers.",
            "period_start_utc",
        ),
        _MARKET_DATE,
        Column("value", "float8", "Float64", "KPI value in the unit given by the KPI catalog.", "kpi_value"),
    ),
    order_by=("kpi_code", "grain", "zone", "period_start"),
    unique_key=("kpi_code", "grain", "zone", "org_id", "period_start"),
    ts_column="period_start",
)

TABLES: dict[str, TableSpec] = {
    spec.qualified_pg_name: spec for spec in (FCT_PRICES_HOURLY, FCT_PRICES_5MIN, KPI_VALUES)
}


def table_spec(name: str) -> TableSpec:
    """The registered spec for `schema.table` (or the ClickHouse table name); KeyError lists known names."""
    if name in TABLES:
        return TABLES[name]
    for spec in TABLES.values():
        if spec.ch_table == name:
            return spec
    raise KeyError(f"unknown BI table {name!r}; registered: {', '.join(sorted(TABLES))}")
