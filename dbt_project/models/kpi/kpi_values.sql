{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['kpi_code', 'grain', 'zone', 'period_start']}, {'columns': ['market_date']}],
    meta={'optional_parents': ['fct_bids', 'fct_positions']}
) }}
-- Every KPI of gold.kpi_catalog in one long table. Zone KPIs carry the org_id of their input rows (NULL
-- for public market data); org KPIs are per org and zone. Definitions live in seeds/kpi_catalog.csv.
-- The trading facts are optional parents (macros/optional_parents.sql): until their first build the market
-- KPIs are built without them, and the day is rebuilt with the org KPIs when they arrive.
with da as (
    select
        p.zone, p.org_id, p.ts_utc, p.market_date, p.price_avg as price, z.market, z.currency,
        {{ is_peak_hour('(p.ts_utc at time zone z.timezone)', 'z.peak_start_hour', 'z.peak_end_hour',
                        'z.peak_weekdays_only') }} as is_peak
    from {{ ref('fct_prices_hourly') }} as p
    join {{ ref('dim_zone') }} as z on z.zone = p.zone
    where p.market = 'DA' and {{ market_date_window('p.market_date') }}
),
market_hour as (
    -- the public reference price of a market in an hour, across its zones
    select market, currency, ts_utc, avg(price) as mean_price
    from da
    where org_id is null
    group by 1, 2, 3
),
da_spread as (
    select da.*, da.price - m.mean_price as spread
    from da
    left join market_hour as m
        on m.market = da.market and m.currency = da.currency and m.ts_utc = da.ts_utc
),
price_day as (
    select
        s.zone, s.org_id, s.market_date, c.day_start_utc, c.hours_in_day,
        avg(s.price)                                  as price_avg,
        max(s.price)                                  as price_max,
        min(s.price)                                  as price_min,
        avg(s.price) filter (where s.is_peak)         as price_peak_avg,
        avg(s.price) filter (where not s.is_peak)     as price_offpeak_avg,
        stddev_pop(s.price)                           as price_volatility,
        avg(s.spread)                                 as price_spread,
        count(distinct s.ts_utc)::double precision / c.hours_in_day as price_coverage
    from da_spread as s
    join {{ ref('dim_calendar') }} as c on c.zone = s.zone and c.market_date = s.market_date
    group by 1, 2, 3, 4, 5
),
price_minute as (
    select zone, org_id, ts_utc, market_date, avg(price) as price
    from {{ ref('fct_prices_5min') }}
    where node is null and {{ market_date_window('market_date') }}
    group by 1, 2, 3, 4
),
load_hour as (
    select zone, org_id, ts_utc, market_date, load_mw_avg
    from {{ ref('fct_load_hourly') }}
    where {{ market_date_window('market_date') }}
),
gen_hour as (
    select
        zone, org_id, ts_utc, market_date,
        sum(generation_mw_avg)                              as generation_mw,
        sum(generation_mw_avg) filter (where is_renewable)  as renewable_mw
    from {{ ref('fct_generation_hourly') }}
    where {{ market_date_window('market_date') }}
    group by 1, 2, 3, 4
),
imbalance_hour as (
    select g.zone, g.org_id, g.ts_utc, g.market_date, g.generation_mw - l.load_mw_avg as imbalance_mw
    from gen_hour as g
    join load_hour as l
        on l.zone = g.zone and l.org_id is not distinct from g.org_id and l.ts_utc = g.ts_utc
),
bids_hour as (
    select
        b.org_id, b.zone, {{ local_hour_start('b.delivery_start', 'z.timezone') }} as ts_utc, b.market_date,
        count(*) filter (where b.is_accepted) as n_accepted,
        count(*) filter (where b.is_decided)  as n_decided,
        sum(b.cleared_quantity_mw)            as cleared_mwh
    from {{ optional_ref('fct_bids', {
        'org_id': 'text', 'zone': 'text', 'delivery_start': 'timestamptz', 'market_date': 'date',
        'is_accepted': 'boolean', 'is_decided': 'boolean', 'cleared_quantity_mw': 'double precision'}) }} as b
    join {{ ref('dim_zone') }} as z on z.zone = b.zone
    where {{ market_date_window('b.market_date') }}
    group by 1, 2, 3, 4
),
positions_hour as (
    select
        p.org_id, p.zone, {{ local_hour_start('p.delivery_start', 'z.timezone') }} as ts_utc, p.market_date,
        sum(p.cash_flow)        as revenue,
        sum(p.net_position_mwh) as net_position
    from {{ optional_ref('fct_positions', {
        'org_id': 'text', 'zone': 'text', 'delivery_start': 'timestamptz', 'market_date': 'date',
        'cash_flow': 'double precision', 'net_position_mwh': 'double precision'}) }} as p
    join {{ ref('dim_zone') }} as z on z.zone = p.zone
    where {{ market_date_window('p.market_date') }}
    group by 1, 2, 3, 4
),
day_start as (
    select zone, market_date, day_start_utc from {{ ref('dim_calendar') }}
),
kpis as (
    -- zone KPIs --------------------------------------------------------------------------------
    select 'price_avg' as kpi_code, 'minute' as grain, zone, org_id, ts_utc as period_start, market_date,
           price as value
    from price_minute
    union all
    select 'price_avg', 'hour', zone, org_id, ts_utc, market_date, price from da_spread
    union all
    select 'price_spread', 'hour', zone, org_id, ts_utc, market_date, spread from da_spread
    union all
    select k.kpi_code, 'day', d.zone, d.org_id, d.day_start_utc, d.market_date, k.value
    from price_day as d
    cross join lateral (values
        ('price_avg', d.price_avg),
        ('price_max', d.price_max),
        ('price_min', d.price_min),
        ('price_peak_avg', d.price_peak_avg),
        ('price_offpeak_avg', d.price_offpeak_avg),
        ('price_volatility', d.price_volatility),
        ('price_spread', d.price_spread),
        ('price_coverage', d.price_coverage)
    ) as k (kpi_code, value)
    union all
    select 'load_avg', 'hour', zone, org_id, ts_utc, market_date, load_mw_avg from load_hour
    union all
    select k.kpi_code, 'day', d.zone, d.org_id, c.day_start_utc, d.market_date, k.value
    from (
        select zone, org_id, market_date, avg(load_mw_avg) as load_avg, max(load_mw_avg) as load_peak
        from load_hour group by 1, 2, 3
    ) as d
    join day_start as c on c.zone = d.zone and c.market_date = d.market_date
    cross join lateral (values
        ('load_avg', d.load_avg),
        ('load_peak', d.load_peak),
        ('load_factor', d.load_avg / nullif(d.load_peak, 0))
    ) as k (kpi_code, value)
    union all
    select 'renewable_share', 'hour', zone, org_id, ts_utc, market_date,
           coalesce(renewable_mw, 0) / nullif(generation_mw, 0)
    from gen_hour
    union all
    select 'renewable_share', 'day', g.zone, g.org_id, c.day_start_utc, g.market_date,
           coalesce(sum(g.renewable_mw), 0) / nullif(sum(g.generation_mw), 0)
    from gen_hour as g
    join day_start as c on c.zone = g.zone and c.market_date = g.market_date
    group by g.zone, g.org_id, c.day_start_utc, g.market_date
    union all
    select 'imbalance', 'hour', zone, org_id, ts_utc, market_date, imbalance_mw from imbalance_hour
    union all
    select 'imbalance', 'day', i.zone, i.org_id, c.day_start_utc, i.market_date, avg(i.imbalance_mw)
    from imbalance_hour as i
    join day_start as c on c.zone = i.zone and c.market_date = i.market_date
    group by i.zone, i.org_id, c.day_start_utc, i.market_date
    -- org KPIs ---------------------------------------------------------------------------------
    union all
    select 'bid_acceptance_rate', 'hour', zone, org_id, ts_utc, market_date,
           n_accepted::double precision / nullif(n_decided, 0)
    from bids_hour
    union all
    select 'cleared_volume', 'hour', zone, org_id, ts_utc, market_date, cleared_mwh from bids_hour
    union all
    select k.kpi_code, 'day', b.zone, b.org_id, c.day_start_utc, b.market_date, k.value
    from (
        select zone, org_id, market_date, sum(n_accepted) as n_accepted, sum(n_decided) as n_decided,
               sum(cleared_mwh) as cleared_mwh
        from bids_hour group by 1, 2, 3
    ) as b
    join day_start as c on c.zone = b.zone and c.market_date = b.market_date
    cross join lateral (values
        ('bid_acceptance_rate', b.n_accepted::double precision / nullif(b.n_decided, 0)),
        ('cleared_volume', b.cleared_mwh)
    ) as k (kpi_code, value)
    union all
    select 'revenue', 'hour', zone, org_id, ts_utc, market_date, revenue from positions_hour
    union all
    select 'net_position', 'hour', zone, org_id, ts_utc, market_date, net_position from positions_hour
    union all
    select k.kpi_code, 'day', p.zone, p.org_id, c.day_start_utc, p.market_date, k.value
    from (
        select zone, org_id, market_date, sum(revenue) as revenue, sum(net_position) as net_position
        from positions_hour group by 1, 2, 3
    ) as p
    join day_start as c on c.zone = p.zone and c.market_date = p.market_date
    cross join lateral (values ('revenue', p.revenue), ('net_position', p.net_position)) as k (kpi_code, value)
)
select
    kpi_code::text          as kpi_code,
    grain::text             as grain,
    zone::text              as zone,
    org_id::text            as org_id,
    period_start::timestamptz as period_start,
    market_date::date       as market_date,
    value::double precision as value
from kpis
where value is not null
