"""Day-ahead exchange bidding rules per market, and the zone → market mapping.

Belongs here: the small, versioned table of the rules a bid curve must satisfy (price floor/cap, price and
quantity ticks, maximum steps per curve). The figures are the commonly published day-ahead limits (2024)
rounded to what a curve builder needs; check the exchange's current rulebook before submitting real bids.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ml.optimization.common import StrictModel


def on_tick(value: float, tick: float) -> bool:
    """Whether value is an integer multiple of tick (up to float noise)."""
    steps = value / tick
    return abs(steps - round(steps)) <= 1e-6


class MarketRules(StrictModel):
    market: str
    currency: str
    price_floor: float
    price_cap: float
    price_tick: float = Field(gt=0)
    quantity_tick_mw: float = Field(gt=0)
    max_steps: int = Field(ge=1, description="Most price–quantity points per curve (per hour).")

    @model_validator(mode="after")
    def _floor_below_cap_on_ticks(self) -> MarketRules:
        if self.price_floor >= self.price_cap:
            raise ValueError(f"price_floor ({self.price_floor}) must be below price_cap ({self.price_cap})")
        for name in ("price_floor", "price_cap"):
            value = getattr(self, name)
            if not on_tick(value, self.price_tick):
                raise ValueError(f"{name} ({value}) is not a multiple of price_tick ({self.price_tick})")
        return self


MARKET_RULES: dict[str, MarketRules] = {
    r.market: r
    for r in (
        # PJM: cost-based offers may reach $2,000/MWh; 10 segments per offer curve.
        MarketRules(
            market="PJM",
            currency="USD",
            price_floor=-1000,
            price_cap=2000,
            price_tick=0.01,
            quantity_tick_mw=0.1,
            max_steps=10,
        ),
        # CAISO: bid floor −$150, hard cap $2,000; 10 segments.
        MarketRules(
            market="CAISO",
            currency="USD",
            price_floor=-150,
            price_cap=2000,
            price_tick=0.01,
            quantity_tick_mw=0.01,
            max_steps=10,
        ),
        # ERCOT: offer floor −$250, HCAP $5,000; 10 price/quantity pairs.
        MarketRules(
            market="ERCOT",
            currency="USD",
            price_floor=-250,
            price_cap=5000,
            price_tick=0.01,
            quantity_tick_mw=0.1,
            max_steps=10,
        ),
        # NYISO: −$1,000 to $1,000; up to 12 bid points.
        MarketRules(
            market="NYISO",
            currency="USD",
            price_floor=-1000,
            price_cap=1000,
            price_tick=0.01,
            quantity_tick_mw=0.1,
            max_steps=12,
        ),
        # IEX (India) DAM: Rs 0 to Rs 10,000/MWh; price-quantity pairs per block.
        MarketRules(
            market="IEX",
            currency="INR",
            price_floor=0,
            price_cap=10000,
            price_tick=1,
            quantity_tick_mw=0.1,
            max_steps=64,
        ),
        # SDAC harmonised limits (EPEX, Nord Pool): −€500 to €4,000, 0.1 €/MWh and 0.1 MW.
        MarketRules(
            market="EPEX",
            currency="EUR",
            price_floor=-500,
            price_cap=4000,
            price_tick=0.1,
            quantity_tick_mw=0.1,
            max_steps=256,
        ),
        MarketRules(
            market="NORDPOOL",
            currency="EUR",
            price_floor=-500,
            price_cap=4000,
            price_tick=0.1,
            quantity_tick_mw=0.1,
            max_steps=200,
        ),
    )
}

# Zone codes of docs/data_contracts.md → market whose rules apply.
ZONE_MARKETS: dict[str, str] = {
    "PJM": "PJM",
    "PJM_COMED": "PJM",
    "CAISO": "CAISO",
    "ERCOT": "ERCOT",
    "NYISO": "NYISO",
    "IEX_N": "IEX",
    "IEX_S": "IEX",
    "IEX_W": "IEX",
    "IEX_E": "IEX",
    "IEX_NE": "IEX",
    "FR": "EPEX",
    "NP": "NORDPOOL",
}


def market_rules_for(zone_or_market: str) -> MarketRules:
    """Rules for a zone code or market name; KeyError naming the known ones otherwise."""
    key = zone_or_market.upper()
    market = ZONE_MARKETS.get(key, key)
    if market not in MARKET_RULES:
        raise KeyError(
            f"no market rules for {zone_or_market!r}; known markets {sorted(MARKET_RULES)}, "
            f"zones {sorted(ZONE_MARKETS)}"
        )
    return MARKET_RULES[market]
