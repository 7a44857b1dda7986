{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['zone', 'market_date']}, {'columns': ['ts_utc']}]
) }}
-- Zone prices (node NULL) per market aggregated to zone-local hours. org_id is NULL for public market
-- feeds and set for an organization's uploaded prices (row-level security keeps those private).
select
    p.zone,
    {{ local_hour_start('p.ts_utc', 'z.timezone') }} as ts_utc,
    p.market_date,
    p.market,
    p.currency,
    p.org_id,
    avg(p.price)  as price_avg,
    min(p.price)  as price_min,
    max(p.price)  as price_max,
    count(*)      as n_obs
from {{ ref('stg_market__prices') }} as p
join {{ ref('stg_ref__zones') }} as z on z.zone = p.zone
where p.node is null
  and {{ market_date_window('p.market_date') }}
group by 1, 2, 3, 4, 5, 6
