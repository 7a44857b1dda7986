{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['zone', 'market_date']}]
) }}
select
    l.zone,
    {{ local_hour_start('l.ts_utc', 'z.timezone') }} as ts_utc,
    l.market_date,
    l.org_id,
    avg(l.load_mw) as load_mw_avg,
    max(l.load_mw) as load_mw_max,
    count(*)       as n_obs
from {{ ref('stg_market__load') }} as l
join {{ ref('stg_ref__zones') }} as z on z.zone = l.zone
where {{ market_date_window('l.market_date') }}
group by 1, 2, 3, 4
