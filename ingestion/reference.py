"""Reference dimensions: market zones, pricing nodes, organizations, assets and demo users.

These are the seeds every layer joins to (zone timezones and currencies, market price floors and caps,
asset ownership). `seed_reference_data` upserts them into the `silver.ref__*` tables and `ops.users`, so
running it twice changes nothing. Users are seeded without passwords: credentials are set through
`optibid users` (secrets never live in the repository).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np
import psycopg


@dataclass(frozen=True)
class Zone:
    zone: str
    name: str
    market: str
    iso: str
    timezone: str
    currency: str
    latitude: float
    longitude: float
    price_floor: float
    price_cap: float


@dataclass(frozen=True)
class Organization:
    org_id: str
    name: str
    country: str


@dataclass(frozen=True)
class Asset:
    asset_id: str
    org_id: str
    zone: str
    name: str
    technology: str
    capacity_mw: float
    energy_mwh: float | None
    marginal_cost: float | None


@dataclass(frozen=True)
class User:
    user_id: str
    org_id: str
    email: str
    role: str


# Floors and caps are the markets' offer rules (per MWh, in the market's currency), not observed ranges:
# data-quality bounds come from here.
ZONES: tuple[Zone, ...] = (
    Zone("PJM", "PJM Interconnection (West Hub)", "PJM", "PJM", "America/New_York", "USD", 39.95, -77.0, -1000, 3700),
    Zone("NYISO", "New York ISO (Zone J)", "NYISO", "NYISO", "America/New_York", "USD", 40.71, -74.0, -1000, 5000),
    Zone("ERCOT", "ERCOT (Houston Hub)", "ERCOT", "ERCOT", "America/Chicago", "USD", 29.76, -95.37, -250, 5000),
    Zone("CAISO", "California ISO (SP15)", "CAISO", "CAISO", "America/Los_Angeles", "USD", 34.05, -118.24, -150, 2000),
    Zone("IEX_N", "IEX North Region", "IEX", "IEX", "Asia/Kolkata", "INR", 28.61, 77.21, 0, 10000),
    Zone("IEX_S", "IEX South Region", "IEX", "IEX", "Asia/Kolkata", "INR", 13.08, 80.27, 0, 10000),
    Zone("IEX_W", "IEX West Region", "IEX", "IEX", "Asia/Kolkata", "INR", 19.08, 72.88, 0, 10000),
    Zone("IEX_E", "IEX East Region", "IEX", "IEX", "Asia/Kolkata", "INR", 22.57, 88.36, 0, 10000),
    Zone("IEX_NE", "IEX North-East Region", "IEX", "IEX", "Asia/Kolkata", "INR", 26.14, 91.74, 0, 10000),
    # The shared real datasets (epftoolbox), loaded by the same paths as everything else.
    Zone("NP", "Nord Pool system price", "NORDPOOL", "NORDPOOL", "Europe/Oslo", "EUR", 59.91, 10.75, -500, 4000),
    Zone("PJM_COMED", "PJM ComEd zone", "PJM", "PJM", "America/Chicago", "USD", 41.88, -87.63, -1000, 3700),
    Zone("FR", "EPEX Spot France", "EPEX", "EPEX", "Europe/Paris", "EUR", 48.86, 2.35, -500, 4000),
)

# `market` owns the public market feed landed from the landing folder's root; silver publishes its rows
# with org_id NULL (visible to every organization).
MARKET_FEED_ORG = "market"

ORGANIZATIONS: tuple[Organization, ...] = (
    Organization(MARKET_FEED_ORG, "Public market data feed", "ZZ"),
    Organization("acme", "Acme Energy Trading", "US"),
    Organization("voltindia", "Volt India Power", "IN"),
)

ASSETS: tuple[Asset, ...] = (
    Asset("acme-solar-1", "acme", "CAISO", "Mojave Solar", "solar", 150.0, None, 0.0),
    Asset("acme-wind-1", "acme", "ERCOT", "Panhandle Wind", "wind", 200.0, None, 0.0),
    Asset("acme-gas-1", "acme", "PJM", "Keystone CCGT", "thermal", 400.0, None, 38.0),
    Asset("acme-bess-1", "acme", "CAISO", "Desert Battery", "battery", 100.0, 400.0, 2.0),
    Asset("acme-hydro-1", "acme", "NYISO", "Hudson Hydro", "hydro", 80.0, None, 5.0),
    Asset("volt-solar-1", "voltindia", "IEX_W", "Rajasthan Solar Park", "solar", 300.0, None, 0.0),
    Asset("volt-wind-1", "voltindia", "IEX_S", "Tamil Nadu Wind", "wind", 250.0, None, 0.0),
    Asset("volt-coal-1", "voltindia", "IEX_E", "Eastern Coal", "thermal", 600.0, None, 3200.0),
    Asset("volt-bess-1", "voltindia", "IEX_N", "Delhi Storage", "battery", 50.0, 200.0, 150.0),
)

USERS: tuple[User, ...] = (
    User("acme-admin", "acme", "admin@acme.example", "admin"),
    User("acme-analyst", "acme", "analyst@acme.example", "analyst"),
    User("acme-trader", "acme", "trader@acme.example", "trader"),
    User("acme-viewer", "acme", "viewer@acme.example", "viewer"),
    User("volt-admin", "voltindia", "admin@volt.example", "admin"),
    User("volt-analyst", "voltindia", "analyst@volt.example", "analyst"),
)

ZONES_BY_CODE: dict[str, Zone] = {z.zone: z for z in ZONES}


def simulated_zones() -> list[Zone]:
    """Zones the simulator produces data for (not the real-dataset zones, which come from files)."""
    return [z for z in ZONES if z.zone not in {"NP", "PJM_COMED", "FR"}]


def pricing_nodes(
    nodes_per_zone: int, zones: list[Zone] | None = None, seed: int = 7
) -> list[tuple[str, str, float, float]]:
    """Deterministic pricing nodes `(node, zone, latitude, longitude)` scattered around each zone."""
    rng = np.random.default_rng(seed)
    nodes = []
    for zone in zones or simulated_zones():
        for i in range(nodes_per_zone):
            lat = zone.latitude + float(rng.normal(0, 0.8))
            lon = zone.longitude + float(rng.normal(0, 0.8))
            nodes.append((f"{zone.zone}.N{i:04d}", zone.zone, round(lat, 4), round(lon, 4)))
    return nodes


def seed_reference_data(conn: psycopg.Connection, nodes_per_zone: int = 4) -> dict[str, int]:
    """Upsert every reference row; counts per table."""
    _upsert(conn, "silver.ref__organizations", Organization, [astuple(o) for o in ORGANIZATIONS], "org_id")
    _upsert(conn, "silver.ref__zones", Zone, [astuple(z) for z in ZONES], "zone")
    node_rows = pricing_nodes(nodes_per_zone)
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO silver.ref__nodes (node, zone, latitude, longitude) VALUES (%s, %s, %s, %s)
               ON CONFLICT (node) DO UPDATE SET zone = EXCLUDED.zone, latitude = EXCLUDED.latitude,
               longitude = EXCLUDED.longitude""",
            node_rows,
        )
    _upsert(conn, "silver.ref__assets", Asset, [astuple(a) for a in ASSETS], "asset_id")
    _upsert(conn, "ops.users", User, [astuple(u) for u in USERS], "user_id")
    return {
        "organizations": len(ORGANIZATIONS),
        "zones": len(ZONES),
        "nodes": len(node_rows),
        "assets": len(ASSETS),
        "users": len(USERS),
    }


def _upsert(conn: psycopg.Connection, table: str, kind: type, rows: list[tuple], key: str) -> None:
    from psycopg import sql

    columns = [f.name for f in fields(kind)]
    schema, name = table.split(".")
    statement = sql.SQL(
        "INSERT INTO {table} ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {updates}"
    ).format(
        table=sql.Identifier(schema, name),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        key=sql.Identifier(key),
        updates=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns if c != key
        ),
    )
    with conn.cursor() as cur:
        cur.executemany(statement, rows)
