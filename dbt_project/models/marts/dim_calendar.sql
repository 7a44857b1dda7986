-- One row per zone and zone-local date; hours_in_day is 23/25 on DST change days.
with days as (
    select d::date as market_date
    from generate_series('{{ var("calendar_start") }}'::date, '{{ var("calendar_end") }}'::date, interval '1 day') as d
),
bounds as (
    select
        z.zone,
        z.timezone,
        days.market_date,
        {{ local_day_start('days.market_date', 'z.timezone') }}                      as day_start_utc,
        {{ local_day_start('days.market_date + 1', 'z.timezone') }}                  as day_end_utc
    from days
    cross join {{ ref('stg_ref__zones') }} as z
)
select
    zone,
    market_date,
    day_start_utc,
    day_end_utc,
    (extract(epoch from day_end_utc - day_start_utc) / 3600)::integer as hours_in_day,
    extract(year from market_date)::integer    as year,
    extract(quarter from market_date)::integer as quarter,
    extract(month from market_date)::integer   as month,
    extract(isodow from market_date)::integer  as iso_day_of_week,
    extract(isodow from market_date) >= 6      as is_weekend
from bounds
