"""The typed Python client of the OptiBid API: `OptiBidClient` (see README, "Python client").

What belongs here: calling the API over HTTP and WebSocket and typing what it answers. Nothing of the
platform is imported (an import-linter contract checks it): the package needs only httpx and websockets, so
it can be copied or packaged on its own for an analyst's machine.
"""

from optibid_client.client import OptiBidClient, OptiBidError, StreamClosed
from optibid_client.models import (
    AnomalyRow,
    BacktestRow,
    BidRow,
    DriftSummaryRow,
    ForecastJob,
    ForecastRow,
    KpiMessage,
    KpiStream,
    KpiValueRow,
    ModelSelectionRow,
    Page,
    PositionRow,
    PriceRow,
    SeriesRow,
    TradeRow,
)

__all__ = [
    "AnomalyRow",
    "BacktestRow",
    "BidRow",
    "DriftSummaryRow",
    "ForecastJob",
    "ForecastRow",
    "KpiMessage",
    "KpiStream",
    "KpiValueRow",
    "ModelSelectionRow",
    "OptiBidClient",
    "OptiBidError",
    "Page",
    "PositionRow",
    "PriceRow",
    "SeriesRow",
    "StreamClosed",
    "TradeRow",
]
