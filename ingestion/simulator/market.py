"""A deterministic power-market simulator: weather, load, renewables and prices that behave like markets.

Each zone gets a temperature path (seasonal + diurnal + autocorrelated weather), load driven by
temperature and the calendar (daily peaks, weekends), solar and wind output, and a day-ahead price that is
a merit-order function of net load on top of a slowly drifting fuel price, with mean-reverting noise,
scarcity spikes and negative prices when renewables flood a light-load hour. Real-time 5-minute nodal
prices add a congestion basis per node and intra-hour noise to the zone's price.

Everything is generated one day at a time (`iter_market_days`) so years and thousands of nodes stream
with bounded memory; `simulate_market` collects a short window into frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from ingestion.reference import Zone, pricing_nodes, simulated_zones

# Typical price level per MWh and peak load per zone currency, so INR and USD markets look like themselves.
_PRICE_LEVEL = {"USD": 42.0, "INR": 4200.0, "EUR": 45.0}
_RENEWABLE_SHARE = {"CAISO": (0.35, 0.10), "ERCOT": (0.10, 0.30)}  # (solar, wind) fraction of peak load


@dataclass(frozen=True)
class MarketDay:
    """One simulated day across all zones (UTC day)."""

    day: date
    prices_hourly: pd.DataFrame  # ts_utc, zone, node(None), market='DA', interval_minutes=60, price, currency
    prices_5min: pd.DataFrame  # ts_utc, zone, node, market='RT', interval_minutes=5, price, currency
    load_hourly: pd.DataFrame  # ts_utc, zone, interval_minutes, load_mw
    generation_hourly: pd.DataFrame  # ts_utc, zone, fuel, interval_minutes, generation_mw
    weather_hourly: pd.DataFrame  # ts_utc, zone, temperature_c, wind_speed_ms, irradiance_wm2


@dataclass(frozen=True)
class MarketData:
    """Frames for a whole simulated window."""

    prices_hourly: pd.DataFrame
    prices_5min: pd.DataFrame
    load_hourly: pd.DataFrame
    generation_hourly: pd.DataFrame
    weather_hourly: pd.DataFrame


class _ZoneState:
    """Slow state carried from day to day so consecutive days join up (fuel price, weather, noise)."""

    def __init__(self, zone: Zone, rng: np.random.Generator) -> None:
        self.zone = zone
        self.peak_load = float(rng.uniform(8_000, 40_000))
        solar, wind = _RENEWABLE_SHARE.get(zone.zone, (0.12, 0.12))
        self.solar_capacity = self.peak_load * solar * 1.6
        self.wind_capacity = self.peak_load * wind * 2.5
        self.fuel = 1.0
        self.weather_anomaly = 0.0
        self.cloud = 0.3
        self.wind_state = 0.4
        self.price_noise = 0.0
        self.level = _PRICE_LEVEL.get(zone.currency, 40.0)


def iter_market_days(
    start: date,
    days: int,
    *,
    zones: list[Zone] | None = None,
    nodes_per_zone: int = 4,
    five_minute: bool = True,
    seed: int = 42,
) -> Iterator[MarketDay]:
    """Simulated market days from `start` (UTC), deterministic for a given seed."""
    zones = zones or simulated_zones()
    rng = np.random.default_rng(seed)
    states = [_ZoneState(z, rng) for z in zones]
    nodes = pricing_nodes(nodes_per_zone, zones, seed=seed)
    node_basis = {node: float(rng.normal(0, 0.06)) for node, *_ in nodes}
    for offset in range(days):
        day = start + timedelta(days=offset)
        yield _simulate_day(day, states, nodes, node_basis, five_minute, rng)


def simulate_market(start: date, days: int, **kwargs: object) -> MarketData:
    """All frames for `days` days from `start` (keep the window small; stream long ones with iter_market_days)."""
    parts = list(iter_market_days(start, days, **kwargs))  # type: ignore[arg-type]
    return MarketData(
        *(pd.concat([getattr(p, f) for p in parts], ignore_index=True) for f in MarketData.__dataclass_fields__)
    )


def _simulate_day(
    day: date,
    states: list[_ZoneState],
    nodes: list[tuple[str, str, float, float]],
    node_basis: dict[str, float],
    five_minute: bool,
    rng: np.random.Generator,
) -> MarketDay:
    utc_hours = pd.date_range(datetime(day.year, day.month, day.day, tzinfo=UTC), periods=24, freq="h")
    prices, loads, gens, weather, rt = [], [], [], [], []
    for state in states:
        zone = state.zone
        hours = _local_hour_starts(utc_hours, zone.timezone)
        local = hours.tz_convert(zone.timezone)
        local_hour = local.hour.to_numpy() + local.minute.to_numpy() / 60
        doy = local.dayofyear.to_numpy()
        weekend = local.dayofweek.to_numpy() >= 5

        # Weather: seasonal mean by latitude, diurnal swing, and an AR(1) anomaly that persists for days.
        seasonal = (
            15 - 12 * np.cos(2 * np.pi * (doy - 15) / 365) * np.sign(zone.latitude) * min(abs(zone.latitude), 45) / 45
        )
        if abs(zone.latitude) < 30:
            seasonal = seasonal + 10
        state.weather_anomaly = 0.85 * state.weather_anomaly + rng.normal(0, 1.5)
        temperature = seasonal + 5 * np.sin(2 * np.pi * (local_hour - 9) / 24) + state.weather_anomaly
        state.cloud = float(np.clip(0.7 * state.cloud + rng.normal(0.1, 0.15), 0, 0.9))
        state.wind_state = float(np.clip(0.75 * state.wind_state + rng.normal(0.1, 0.15), 0.02, 1))
        wind_speed = np.clip(state.wind_state * 14 + rng.normal(0, 1.2, 24), 0, 30)

        # Load: temperature drives heating and cooling; morning and evening peaks; weekends lighter.
        profile = 0.72 + 0.16 * np.exp(-((local_hour - 9) ** 2) / 8) + 0.22 * np.exp(-((local_hour - 19) ** 2) / 6)
        thermal = 1 + 0.012 * np.abs(temperature - 18) ** 1.3
        load = state.peak_load * profile * thermal * np.where(weekend, 0.88, 1.0) * rng.normal(1, 0.01, 24)
        load = load / thermal.max() * 0.95

        # Renewables: solar follows the sun's elevation and the clouds; wind the cube of speed, capped.
        elevation = np.clip(np.sin(np.pi * (local_hour - 6) / 13), 0, None)
        irradiance = 1000 * elevation * (1 - state.cloud)
        solar = state.solar_capacity * irradiance / 1000
        wind = state.wind_capacity * np.clip((wind_speed / 12) ** 3, 0, 1)
        net_load = np.clip(load - solar - wind, 0.05 * state.peak_load, None)

        # Price: merit order on net load over a drifting fuel price, mean-reverting noise, spikes, negatives.
        state.fuel = float(np.clip(state.fuel * np.exp(rng.normal(0, 0.02)), 0.5, 2.5))
        utilisation = net_load / state.peak_load
        state.price_noise = 0.6 * state.price_noise + rng.normal(0, 0.05)
        price = (
            state.level * state.fuel * (0.45 + 1.1 * utilisation**3) * (1 + state.price_noise + rng.normal(0, 0.04, 24))
        )
        scarcity = (utilisation > 0.82) & (rng.random(24) < 0.25)
        price = np.where(scarcity, price * rng.uniform(3, 12, 24), price)
        oversupply = (solar + wind) > 0.85 * load
        floor = zone.price_floor
        price = np.where(oversupply & (floor < 0), -state.level * rng.uniform(0.05, 0.6, 24), price)
        price = np.clip(price, floor, zone.price_cap).round(2)

        prices.append(pd.DataFrame({"ts_utc": hours, "zone": zone.zone, "price": price}))
        loads.append(pd.DataFrame({"ts_utc": hours, "zone": zone.zone, "load_mw": load.round(1)}))
        for fuel, output in (("solar", solar), ("wind", wind), ("thermal", np.clip(load - solar - wind, 0, None))):
            gens.append(
                pd.DataFrame({"ts_utc": hours, "zone": zone.zone, "fuel": fuel, "generation_mw": output.round(1)})
            )
        weather.append(
            pd.DataFrame(
                {
                    "ts_utc": hours,
                    "zone": zone.zone,
                    "temperature_c": temperature.round(2),
                    "wind_speed_ms": wind_speed.round(2),
                    "irradiance_wm2": irradiance.round(1),
                }
            )
        )
        if five_minute:
            rt.append(_five_minute_nodal(zone, price, hours, nodes, node_basis, rng))

    prices_hourly = pd.concat(prices, ignore_index=True).assign(node=None, market="DA", interval_minutes=60)
    prices_hourly["currency"] = prices_hourly["zone"].map(lambda z: _zone_currency(states, z))
    return MarketDay(
        day=day,
        prices_hourly=prices_hourly[["ts_utc", "zone", "node", "market", "interval_minutes", "price", "currency"]],
        prices_5min=pd.concat(rt, ignore_index=True) if rt else _empty_rt(),
        load_hourly=pd.concat(loads, ignore_index=True).assign(interval_minutes=60)[
            ["ts_utc", "zone", "interval_minutes", "load_mw"]
        ],
        generation_hourly=pd.concat(gens, ignore_index=True).assign(interval_minutes=60)[
            ["ts_utc", "zone", "fuel", "interval_minutes", "generation_mw"]
        ],
        weather_hourly=pd.concat(weather, ignore_index=True),
    )


def _local_hour_starts(utc_hours: pd.DatetimeIndex, timezone: str) -> pd.DatetimeIndex:
    """The UTC day's hours moved onto the zone's local hour boundaries.

    Markets clear local hours: in a half-hour zone (India, +05:30) an hourly product starts at :30 UTC, and a
    price stamped on the UTC hour would straddle two of the market's (and gold's) hours.
    """
    offset = utc_hours[0].tz_convert(timezone).utcoffset()
    minutes = int(offset.total_seconds() // 60) % 60 if offset is not None else 0
    return utc_hours + pd.Timedelta(minutes=minutes)


def _five_minute_nodal(
    zone: Zone,
    hourly_price: np.ndarray,
    hours: pd.DatetimeIndex,
    nodes: list[tuple[str, str, float, float]],
    node_basis: dict[str, float],
    rng: np.random.Generator,
) -> pd.DataFrame:
    zone_nodes = [n for n, z, *_ in nodes if z == zone.zone]
    ts = pd.date_range(hours[0], periods=288, freq="5min")
    base = np.repeat(hourly_price, 12)
    frames = []
    for node in zone_nodes:
        noise = np.cumsum(rng.normal(0, 0.015, 288)) * 0.5
        spikes = np.where(rng.random(288) < 0.003, rng.uniform(2, 6, 288), 1.0)
        price = base * (1 + node_basis[node] + noise) * spikes
        frames.append(
            pd.DataFrame(
                {
                    "ts_utc": ts,
                    "zone": zone.zone,
                    "node": node,
                    "price": np.clip(price, zone.price_floor, zone.price_cap).round(2),
                }
            )
        )
    if not frames:
        return _empty_rt()
    out = pd.concat(frames, ignore_index=True).assign(market="RT", interval_minutes=5, currency=zone.currency)
    return out[["ts_utc", "zone", "node", "market", "interval_minutes", "price", "currency"]]


def _zone_currency(states: list[_ZoneState], zone: str) -> str:
    return next(s.zone.currency for s in states if s.zone.zone == zone)


def _empty_rt() -> pd.DataFrame:
    return pd.DataFrame(columns=["ts_utc", "zone", "node", "market", "interval_minutes", "price", "currency"])
