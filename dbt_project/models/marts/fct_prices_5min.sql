{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['zone', 'market_date']}, {'columns': ['node', 'ts_utc']}]
) }}
-- Five-minute prices at nodes and zones (node NULL = zone price), as published.
select
    p.node,
    p.zone,
    p.ts_utc,
    p.market_date,
    p.market,
    p.currency,
    p.org_id,
    p.price
from {{ ref('stg_market__prices') }} as p
where p.interval_minutes = 5
  and {{ market_date_window('p.market_date') }}
