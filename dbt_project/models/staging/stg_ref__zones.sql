select
    zone, name, upper(market) as market, iso, timezone, currency, latitude, longitude, price_floor, price_cap
from {{ source('silver', 'ref__zones') }}
