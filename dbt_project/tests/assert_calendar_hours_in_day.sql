-- A zone-local day has 23, 24 or 25 hours (or 24 in zones without DST); anything else is a timezone bug.
select zone, market_date, hours_in_day
from {{ ref('dim_calendar') }}
where hours_in_day not in (23, 24, 25)
