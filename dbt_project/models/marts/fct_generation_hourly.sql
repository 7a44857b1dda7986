{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['zone', 'market_date']}]
) }}
-- Fuels missing from seed fuel_types count as not renewable.
select
    g.zone,
    g.fuel,
    {{ local_hour_start('g.ts_utc', 'z.timezone') }} as ts_utc,
    g.market_date,
    g.org_id,
    coalesce(f.is_renewable, false) as is_renewable,
    avg(g.generation_mw)            as generation_mw_avg,
    count(*)                        as n_obs
from {{ ref('stg_market__generation') }} as g
join {{ ref('stg_ref__zones') }} as z on z.zone = g.zone
left join {{ ref('fuel_types') }} as f on f.fuel = g.fuel
where {{ market_date_window('g.market_date') }}
group by 1, 2, 3, 4, 5, 6
