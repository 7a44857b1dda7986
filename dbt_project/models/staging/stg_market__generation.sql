-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    ts_utc::timestamptz             as ts_utc,
    market_date::date               as market_date,
    zone::text                      as zone,
    lower(fuel)::text               as fuel,
    interval_minutes::integer       as interval_minutes,
    generation_mw::double precision as generation_mw,
    org_id::text                    as org_id,
    coalesce(is_gap_filled, false)  as is_gap_filled,
    source::text                    as source
from {{ source('silver', 'market__generation') }}
