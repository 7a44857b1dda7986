"""Backtest of battery scheduling on real day-ahead prices.

Belongs here: reading the shared EPF price files (formats differ per file), the simple price forecast used
until the forecasting library lands (weekly naive: same hour one week earlier), the naive charge-at-night
rule, and the day-by-day revenue comparison forecast-driven vs perfect foresight vs naive rule.
Every schedule is scored at the realised prices, net of degradation.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ml.optimization.common import SolveOptions, SolveStatus
from ml.optimization.storage import (
    StorageAsset,
    StorageDispatchInput,
    schedule_revenue,
    solve_storage_dispatch,
)

NIGHT_CHARGE_HOURS = range(0, 6)
EVENING_DISCHARGE_HOURS = range(17, 22)


def load_epf_prices(path: Path | str) -> pd.Series:
    """Hourly prices of one EPF file (first column timestamp, second price), indexed by timestamp."""
    frame = pd.read_csv(path, skipinitialspace=True)
    ts = pd.to_datetime(frame.iloc[:, 0].astype(str).str.strip(), format="mixed")
    prices = pd.Series(pd.to_numeric(frame.iloc[:, 1], errors="raise").to_numpy(), index=ts, name="price")
    if prices.isna().any():
        raise ValueError(f"{path}: {int(prices.isna().sum())} missing prices")
    return prices[~prices.index.duplicated(keep="first")].sort_index()


def daily_matrix(prices: pd.Series) -> pd.DataFrame:
    """Days × 24 hours (complete days only)."""
    frame = pd.DataFrame(
        {"day": prices.index.normalize(), "hour": prices.index.hour, "price": prices.to_numpy()}
    )
    wide = frame.pivot_table(index="day", columns="hour", values="price", aggfunc="first")
    return wide.dropna()


def naive_night_schedule(asset: StorageAsset) -> tuple[list[float], list[float]]:
    """(net_mw, discharge_mw) for 24 h: charge flat out at night, sell it back in the evening peak."""
    eta_c, eta_d = asset.charge_efficiency, asset.discharge_efficiency
    soc = asset.initial_soc * asset.energy_mwh
    floor = asset.terminal_soc * asset.energy_mwh
    net, dis = [0.0] * 24, [0.0] * 24
    for h in range(24):
        if h in NIGHT_CHARGE_HOURS:
            c = max(0.0, min(asset.power_mw, (asset.max_soc * asset.energy_mwh - soc) / eta_c))
            soc += eta_c * c
            net[h] = -c
        elif h in EVENING_DISCHARGE_HOURS:
            d = max(0.0, min(asset.power_mw, (soc - floor) * eta_d))
            if asset.max_cycles_per_day is not None:
                room = asset.max_cycles_per_day * asset.energy_mwh * (asset.max_soc - asset.min_soc)
                d = min(d, max(0.0, room - sum(dis) / eta_d) * eta_d)
            soc -= d / eta_d
            net[h], dis[h] = d, d
    return net, dis


def backtest_storage(
    prices: pd.Series,
    asset: StorageAsset,
    *,
    start: str | None = None,
    days: int | None = None,
    options: SolveOptions | None = None,
) -> pd.DataFrame:
    """Per day: realised revenue of forecast-driven, perfect-foresight and naive-rule schedules."""
    options = options or SolveOptions()
    wide = daily_matrix(prices)
    rows = []
    chosen = wide.index if start is None else wide.index[wide.index >= pd.Timestamp(start)]
    if days is not None:
        chosen = chosen[:days]
    naive_net, naive_dis = naive_night_schedule(asset)
    for day in chosen:
        last_week = day - pd.Timedelta(days=7)
        if last_week not in wide.index:
            continue
        actual = wide.loc[day].tolist()
        forecast = wide.loc[last_week].tolist()
        realised = {}
        statuses = []
        for name, path in (("forecast", forecast), ("perfect", actual)):
            inp = StorageDispatchInput(asset=asset, price_forecast=path)
            sched = solve_storage_dispatch(inp, options)
            statuses.append(sched.info)
            if sched.info.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
                raise RuntimeError(f"{day.date()} {name}: dispatch {sched.info.status}")
            realised[name] = schedule_revenue(
                inp, [i.net_mw for i in sched.intervals], [i.discharge_mw for i in sched.intervals], actual
            )
        probe = StorageDispatchInput(asset=asset, price_forecast=actual)
        rows.append(
            {
                "day": day,
                "forecast_revenue": realised["forecast"],
                "perfect_revenue": realised["perfect"],
                "naive_revenue": schedule_revenue(probe, naive_net, naive_dis, actual),
                "min_price": min(actual),
                "solve_time_s": sum(i.solve_time_s for i in statuses),
                "hit_time_limit": any(i.hit_time_limit for i in statuses),
            }
        )
    return pd.DataFrame(rows)


def backtest_summary(daily: pd.DataFrame) -> pd.DataFrame:
    """Strategy × (total revenue, mean per day, share of perfect foresight)."""
    perfect = daily["perfect_revenue"].sum()
    rows = []
    for name, col in (
        ("perfect foresight", "perfect_revenue"),
        ("weekly-naive forecast", "forecast_revenue"),
        ("naive night/evening rule", "naive_revenue"),
    ):
        total = daily[col].sum()
        rows.append(
            {
                "strategy": name,
                "days": len(daily),
                "total_revenue": total,
                "mean_per_day": daily[col].mean(),
                "share_of_perfect": total / perfect if perfect else float("nan"),
            }
        )
    return pd.DataFrame(rows)
