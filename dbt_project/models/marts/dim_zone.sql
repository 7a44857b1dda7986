-- Zones with the peak-hour definition of their market (seed peak_hours; DEFAULT when the market has none).
select
    z.zone, z.name, z.market, z.iso, z.timezone, z.currency, z.latitude, z.longitude,
    z.price_floor, z.price_cap,
    coalesce(p.peak_start_hour, d.peak_start_hour) as peak_start_hour,
    coalesce(p.peak_end_hour, d.peak_end_hour)     as peak_end_hour,
    coalesce(p.weekdays_only, d.weekdays_only)     as peak_weekdays_only
from {{ ref('stg_ref__zones') }} as z
left join {{ ref('peak_hours') }} as p on upper(p.market) = z.market
cross join (select * from {{ ref('peak_hours') }} where market = 'DEFAULT') as d
