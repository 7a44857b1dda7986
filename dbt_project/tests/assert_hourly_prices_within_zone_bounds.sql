-- Hourly zone prices stay within the market's offer floor and cap (ref__zones), whatever looks normal.
select p.zone, p.ts_utc, p.market, p.price_min, p.price_max, z.price_floor, z.price_cap
from {{ ref('fct_prices_hourly') }} as p
join {{ ref('dim_zone') }} as z on z.zone = p.zone
where p.price_min < z.price_floor or p.price_max > z.price_cap
