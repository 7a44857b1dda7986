"""Metric definitions checked against hand-computed values."""

from __future__ import annotations

import pandas as pd
import pytest

from ml.forecasting.metrics import metrics_of, pinball_loss, smape


def test_metrics_by_hand() -> None:
    rows = pd.DataFrame(
        {
            "y": [10.0, 20.0, 0.0, 40.0],
            "y_hat": [12.0, 20.0, 0.0, 30.0],
            "y_naive": [10.0, 10.0, 10.0, 10.0],
            "lo80": [11.0, 15.0, -1.0, 35.0],
            "hi80": [13.0, 25.0, 1.0, 45.0],
            "lo95": [9.0, 14.0, -2.0, 20.0],
            "hi95": [15.0, 26.0, 2.0, 50.0],
            "q10": [11.0, 15.0, -1.0, 35.0],
            "q50": [12.0, 20.0, 0.0, 30.0],
            "q90": [13.0, 25.0, 1.0, 45.0],
        }
    )
    m = metrics_of(rows)
    assert m["mae"] == pytest.approx(3.0)
    assert m["rmse"] == pytest.approx((104 / 4) ** 0.5)
    assert m["smape"] == pytest.approx((4 / 22 + 0 + 0 + 20 / 70) / 4 * 100)
    assert m["rmae"] == pytest.approx(3.0 / ((0 + 10 + 10 + 30) / 4))
    assert m["coverage80"] == pytest.approx(0.75)  # 10 is below [11, 13]
    assert m["coverage95"] == pytest.approx(1.0)
    assert smape([0.0], [0.0]) == 0.0
    assert pinball_loss(pd.Series([10.0]).to_numpy(), pd.Series([8.0]).to_numpy(), 0.9) == pytest.approx(1.8)
    assert pinball_loss(pd.Series([10.0]).to_numpy(), pd.Series([12.0]).to_numpy(), 0.9) == pytest.approx(0.2)
