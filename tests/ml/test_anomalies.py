"""Spike / level-shift detection measured on anomalies injected into a synthetic series."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.monitoring.anomalies import ANOMALY_COLUMNS, detect_anomalies


def synthetic_prices(seed: int = 7) -> tuple[pd.DataFrame, set[pd.Timestamp], list[pd.Timestamp]]:
    """120 days of hourly prices (daily + weekly shape, AR noise), 12 spikes and 3 level shifts injected."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=120 * 24, freq="h", tz="UTC")
    t = np.arange(len(ds))
    noise = np.zeros(len(ds))
    for i in range(1, len(ds)):
        noise[i] = 0.6 * noise[i - 1] + rng.normal(0, 1.5)
    y = 50.0 + 10 * np.sin(2 * np.pi * t / 24) + 4 * np.sin(2 * np.pi * t / 168) + noise
    shift_at = [ds[24 * d + 9] for d in (30, 62, 95)]
    for k, start in enumerate(shift_at):
        y[ds >= start] += 25 if k != 1 else -25
    clean = y - noise
    spike_positions = rng.choice(np.arange(10 * 24, 118 * 24), size=12, replace=False)
    spike_positions = [p for p in spike_positions if all(abs(p - ds.get_loc(s)) > 48 for s in shift_at)]
    spikes = set()
    for p in spike_positions:
        y[p] += rng.choice([-1, 1]) * rng.uniform(40, 80)
        spikes.add(ds[p])
    return pd.DataFrame({"unique_id": "SYN", "ds": ds, "y": y, "clean": clean}), spikes, shift_at


def precision_recall(
    found: list[pd.Timestamp], truth: list[pd.Timestamp], tolerance: pd.Timedelta
) -> tuple[float, float]:
    hits = [f for f in found if any(abs(f - t) <= tolerance for t in truth)]
    caught = [t for t in truth if any(abs(f - t) <= tolerance for f in found)]
    precision = len(hits) / len(found) if found else 0.0
    return precision, len(caught) / len(truth)


def test_injected_spikes_and_level_shifts_are_found() -> None:
    frame, spikes, shifts = synthetic_prices()
    out = detect_anomalies(frame.drop(columns="clean"))
    assert list(out.columns) == ANOMALY_COLUMNS
    found_spikes = out.loc[out["kind"] == "spike", "ds"].tolist()
    found_shifts = out.loc[out["kind"] == "level_shift", "ds"].tolist()
    p_spike, r_spike = precision_recall(found_spikes, sorted(spikes), pd.Timedelta(0))
    p_shift, r_shift = precision_recall(found_shifts, shifts, pd.Timedelta(hours=6))
    print(
        f"spikes precision {p_spike:.2f} recall {r_spike:.2f}; "
        f"shifts precision {p_shift:.2f} recall {r_shift:.2f}"
    )
    assert p_spike >= 0.8 and r_spike >= 0.8
    assert p_shift >= 0.75 and r_shift == 1.0
    signs = out[out["kind"] == "level_shift"].set_index("ds")["score"]
    assert (signs.loc[[f for f in found_shifts if abs(f - shifts[1]) <= pd.Timedelta(hours=6)]] < 0).all()


def test_forecast_residuals_as_the_base_signal() -> None:
    frame, spikes, _ = synthetic_prices(seed=11)
    # A forecast that knows the shape and the level (not the noise, not the spikes).
    forecasts = frame[["unique_id", "ds"]].assign(model="m", y_hat=frame["clean"])
    out = detect_anomalies(frame.drop(columns="clean"), forecasts, model="m")
    found = out.loc[out["kind"] == "spike", "ds"].tolist()
    precision, recall = precision_recall(found, sorted(spikes), pd.Timedelta(0))
    assert precision >= 0.8 and recall >= 0.8
    assert out["method"].str.contains("forecast residual").all()
