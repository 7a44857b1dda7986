"""Canonical datasets an uploaded file can land as: schemas, keys, validation rules and column synonyms.

Everything the file-ingestion code knows about a dataset lives here, in one table (`CANONICAL_DATASETS`);
reading, mapping and transforming files is elsewhere in `ingestion.files`. Bronze tables are
`bronze/files__<dataset>` with the canonical columns followed by the lineage columns of `LINEAGE_FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

LINEAGE_FIELDS: list[pa.Field] = [
    pa.field("source_tz", pa.string()),
    pa.field("_upload_id", pa.int64(), nullable=False),
    pa.field("_file_name", pa.string(), nullable=False),
    pa.field("_row_number", pa.int64(), nullable=False),
    pa.field("_sheet", pa.string()),
    pa.field("_org_id", pa.string(), nullable=False),
    pa.field("_ingested_at", TS, nullable=False),
    pa.field("_batch_id", pa.string(), nullable=False),
]


@dataclass(frozen=True)
class Rule:
    """A bound on a numeric field: rows outside it are quarantined with `reason`."""

    column: str
    min: float | None = None
    max: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Dataset:
    """One canonical dataset."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    required: tuple[str, ...]
    value_fields: tuple[str, ...]  # the measured numbers (what a wide file's cells are)
    rules: tuple[Rule, ...] = ()
    # Fields the mapper may fill from file-wide facts (units, defaults, the timestamps themselves).
    derivable: tuple[str, ...] = ()
    name_hints: tuple[str, ...] = field(default=())  # words in a file/sheet name that point at this dataset

    @property
    def bronze_schema(self) -> pa.Schema:
        return pa.schema(list(self.schema) + LINEAGE_FIELDS)

    @property
    def table_name(self) -> str:
        return f"files__{self.name}"


CANONICAL_DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "prices",
            pa.schema(
                [
                    pa.field("ts_utc", TS, nullable=False),
                    pa.field("zone", pa.string(), nullable=False),
                    pa.field("node", pa.string()),
                    pa.field("market", pa.string(), nullable=False),
                    pa.field("interval_minutes", pa.int32(), nullable=False),
                    pa.field("price", pa.float64(), nullable=False),
                    pa.field("currency", pa.string(), nullable=False),
                ]
            ),
            key=("ts_utc", "zone", "node", "market"),
            required=("ts_utc", "zone", "market", "price", "currency"),
            value_fields=("price",),
            # Negative prices are legal; only absurd magnitudes (unit or parsing mistakes) are not.
            rules=(Rule("price", -1_000_000, 1_000_000, "price magnitude above 1,000,000 per MWh"),),
            derivable=("interval_minutes", "node", "market", "currency"),
            name_hints=("price", "prices", "lmp", "spot", "dam", "mcp"),
        ),
        Dataset(
            "load",
            pa.schema(
                [
                    pa.field("ts_utc", TS, nullable=False),
                    pa.field("zone", pa.string(), nullable=False),
                    pa.field("interval_minutes", pa.int32(), nullable=False),
                    pa.field("load_mw", pa.float64(), nullable=False),
                ]
            ),
            key=("ts_utc", "zone"),
            required=("ts_utc", "zone", "load_mw"),
            value_fields=("load_mw",),
            rules=(Rule("load_mw", 0, 1_000_000, "load must be between 0 and 1,000,000 MW"),),
            derivable=("interval_minutes",),
            name_hints=("load", "demand", "consumption"),
        ),
        Dataset(
            "generation",
            pa.schema(
                [
                    pa.field("ts_utc", TS, nullable=False),
                    pa.field("zone", pa.string(), nullable=False),
                    pa.field("fuel", pa.string(), nullable=False),
                    pa.field("interval_minutes", pa.int32(), nullable=False),
                    pa.field("generation_mw", pa.float64(), nullable=False),
                ]
            ),
            key=("ts_utc", "zone", "fuel"),
            required=("ts_utc", "zone", "fuel", "generation_mw"),
            value_fields=("generation_mw",),
            rules=(Rule("generation_mw", 0, 1_000_000, "generation must be between 0 and 1,000,000 MW"),),
            derivable=("interval_minutes",),
            name_hints=("generation", "gen", "production", "output"),
        ),
        Dataset(
            "weather",
            pa.schema(
                [
                    pa.field("ts_utc", TS, nullable=False),
                    pa.field("zone", pa.string(), nullable=False),
                    pa.field("temperature_c", pa.float64()),
                    pa.field("wind_speed_ms", pa.float64()),
                    pa.field("irradiance_wm2", pa.float64()),
                ]
            ),
            key=("ts_utc", "zone"),
            required=("ts_utc", "zone"),
            value_fields=("temperature_c", "wind_speed_ms", "irradiance_wm2"),
            rules=(
                Rule("temperature_c", -90, 60, "temperature outside -90..60 °C"),
                Rule("wind_speed_ms", 0, 120, "wind speed outside 0..120 m/s"),
                Rule("irradiance_wm2", 0, 1500, "irradiance outside 0..1500 W/m²"),
            ),
            name_hints=("weather", "meteo", "temperature"),
        ),
        Dataset(
            "bids",
            pa.schema(
                [
                    pa.field("bid_id", pa.string(), nullable=False),
                    pa.field("ts_utc", TS, nullable=False),
                    pa.field("zone", pa.string(), nullable=False),
                    pa.field("asset_id", pa.string(), nullable=False),
                    pa.field("side", pa.string(), nullable=False),
                    pa.field("price", pa.float64(), nullable=False),
                    pa.field("quantity_mw", pa.float64(), nullable=False),
                ]
            ),
            key=("bid_id",),
            required=("bid_id", "ts_utc", "zone", "asset_id", "side", "price", "quantity_mw"),
            value_fields=("price", "quantity_mw"),
            rules=(
                Rule("price", -1_000_000, 1_000_000, "price magnitude above 1,000,000 per MWh"),
                Rule("quantity_mw", 0, 1_000_000, "quantity must be between 0 and 1,000,000 MW"),
            ),
            name_hints=("bid", "bids", "offer", "offers", "orders"),
        ),
    ]
}

# Normalised header words (lower case, units stripped, separators -> "_") that name a canonical field.
# The mapper scores exact synonym hits highest, then token overlap; value profiles break ties.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "ts_utc": (
        "ts_utc",
        "ts",
        "timestamp",
        "datetime",
        "date_time",
        "time",
        "time_utc",
        "datetime_utc",
        "interval_start",
        "interval_start_utc",
        "delivery_start",
        "period_start",
        "start_time",
        "datetime_beginning",
        "datetime_beginning_utc",
        "datetime_beginning_ept",
        "hour_beginning",
        "mtu",
        "valid_time",
        "utc_timestamp",
        "local_time",
        "date_local",
        "time_local",
        "cet_cest_timestamp",
        "datum",
        "zeit",
        "zeitstempel",
        "datum_uhrzeit",
        "date_heure",
        "fecha",
        "fecha_hora",
    ),
    "zone": (
        "zone",
        "area",
        "bidding_zone",
        "region",
        "market_area",
        "price_area",
        "load_zone",
        "control_area",
        "zone_name",
        "pnode_zone",
        "biddingzone",
        "country",
        "iso_zone",
        "delivery_area",
        "regional_zone",
    ),
    "node": ("node", "pnode", "pnode_name", "bus", "settlement_point", "node_name", "node_id", "location"),
    "market": ("market", "market_type", "da_rt", "run", "auction", "market_run"),
    "price": (
        "price",
        "lmp",
        "price_mwh",
        "spot_price",
        "da_price",
        "rt_price",
        "system_price",
        "total_lmp",
        "settlement_point_price",
        "mcp",
        "clearing_price",
        "lmp_mwh",
        "price_eur_mwh",
        "day_ahead_price",
        "da_lmp",
        "rt_lmp",
        "market_clearing_price",
        "price_eur",
        "price_usd",
        "price_inr",
        "rs_mwh",
        "bid_price",
        "offer_price",
        "preis",
        "prix",
        "precio",
        "spotpreis",
    ),
    "currency": ("currency", "ccy", "curr"),
    "interval_minutes": ("interval_minutes", "interval", "resolution", "granularity", "interval_min"),
    "load_mw": (
        "load_mw",
        "load",
        "demand",
        "consumption",
        "actual_load",
        "total_load",
        "demand_mw",
        "system_load",
        "load_actual",
        "forecast_load",
        "last",
        "verbrauch",
        "netzlast",
        "consommation",
    ),
    "fuel": ("fuel", "fuel_type", "technology", "source", "production_type", "gen_type", "fuel_category"),
    "generation_mw": (
        "generation_mw",
        "generation",
        "gen_mw",
        "output",
        "output_mw",
        "production",
        "production_mw",
        "gen",
    ),
    "temperature_c": (
        "temperature_c",
        "temperature",
        "temp",
        "temp_c",
        "t2m",
        "air_temperature",
        "temperature_2m",
    ),
    "wind_speed_ms": ("wind_speed_ms", "wind_speed", "windspeed", "wind", "ws", "wind_speed_100m", "wind_ms"),
    "irradiance_wm2": (
        "irradiance_wm2",
        "irradiance",
        "ghi",
        "solar_radiation",
        "radiation",
        "shortwave_radiation",
        "solar",
    ),
    "bid_id": ("bid_id", "order_id", "bid", "offer_id", "id"),
    "asset_id": ("asset_id", "asset", "unit", "unit_id", "resource", "resource_id", "plant"),
    "side": ("side", "direction", "buy_sell", "bid_type", "type"),
    "quantity_mw": ("quantity_mw", "quantity", "qty", "volume", "volume_mw", "mw", "quantity_mwh"),
}

# Units written in headers ("Price (€/MWh)", "Rs/MWh") -> (field they imply, currency they imply).
PRICE_UNITS: dict[str, str] = {
    "€/mwh": "EUR",
    "eur/mwh": "EUR",
    "euro/mwh": "EUR",
    "$/mwh": "USD",
    "usd/mwh": "USD",
    "rs/mwh": "INR",
    "inr/mwh": "INR",
    "₹/mwh": "INR",
    "£/mwh": "GBP",
    "gbp/mwh": "GBP",
    "dkk/mwh": "DKK",
    "sek/mwh": "SEK",
    "nok/mwh": "NOK",
    "pln/mwh": "PLN",
    "aud/mwh": "AUD",
}
POWER_UNITS = ("mw", "mwh/h", "gw")
TEMPERATURE_UNITS = ("°c", "degc", "c", "°f", "degf", "f")

MARKET_ALIASES: dict[str, str] = {
    "da": "DA",
    "dam": "DA",
    "day_ahead": "DA",
    "dayahead": "DA",
    "day-ahead": "DA",
    "day ahead": "DA",
    "rt": "RT",
    "rtm": "RT",
    "real_time": "RT",
    "realtime": "RT",
    "real-time": "RT",
    "real time": "RT",
    "rt5": "RT",
    "intraday": "RT",
}
SIDE_ALIASES: dict[str, str] = {
    "buy": "buy",
    "b": "buy",
    "bid": "buy",
    "sell": "sell",
    "s": "sell",
    "offer": "sell",
}


def dataset(name: str) -> Dataset:
    """The canonical dataset `name`; a clear error for unknown names."""
    try:
        return CANONICAL_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(CANONICAL_DATASETS)}") from None
