"""Pictures of optimization results: the storage schedule against the price.

Belongs here: rendering only (matplotlib, headless Agg backend); the per-interval rationale text and the
duals are produced by the solvers themselves (`StorageInterval.rationale`, `energy_value`, `binding`).
"""

from __future__ import annotations

import io
from pathlib import Path

from ml.optimization.storage import StorageSchedule


def storage_schedule_png(
    schedule: StorageSchedule, path: Path | None = None, title: str | None = None
) -> bytes:
    """PNG of price (line), net power (bars: up = discharge/sell) and SoC; also written to `path` if given."""
    # Imported here: pyplot costs ~1.5 s, and every Dagster run process loads this module.
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    iv = schedule.intervals
    x = [i.index for i in iv]
    fig, (ax_price, ax_power) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=[1, 1])
    ax_price.step(x, [i.price for i in iv], where="mid", color="black", label="price")
    values = [i.energy_value for i in iv]
    if all(v is not None for v in values):
        ax_price.step(x, values, where="mid", color="tab:purple", linestyle="--", label="stored-energy value")
    ax_price.set_ylabel("price / MWh")
    ax_price.legend(loc="upper left")
    ax_power.bar(
        x,
        [i.net_mw for i in iv],
        color=["tab:green" if i.net_mw >= 0 else "tab:red" for i in iv],
        label="net MW (+ sell, − buy)",
    )
    ax_power.set_ylabel("MW")
    ax_soc = ax_power.twinx()
    ax_soc.plot(x, [i.soc_mwh for i in iv], color="tab:blue", label="SoC MWh")
    ax_soc.set_ylabel("MWh")
    ax_power.set_xlabel("interval")
    ax_power.legend(loc="upper left")
    ax_soc.legend(loc="upper right")
    fig.suptitle(title or f"{schedule.asset_id}: schedule vs price ({schedule.info.status})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
