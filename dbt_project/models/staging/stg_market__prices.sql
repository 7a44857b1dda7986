-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    ts_utc::timestamptz            as ts_utc,
    market_date::date              as market_date,
    zone::text                     as zone,
    node::text                     as node,
    market::text                   as market,
    interval_minutes::integer      as interval_minutes,
    price::double precision        as price,
    currency::text                 as currency,
    org_id::text                   as org_id,
    coalesce(is_gap_filled, false) as is_gap_filled,
    source::text                   as source
from {{ source('silver', 'market__prices') }}
