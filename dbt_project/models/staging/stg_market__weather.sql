-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    ts_utc::timestamptz               as ts_utc,
    market_date::date                 as market_date,
    zone::text                        as zone,
    interval_minutes::integer         as interval_minutes,
    temperature_c::double precision   as temperature_c,
    wind_speed_ms::double precision   as wind_speed_ms,
    irradiance_wm2::double precision  as irradiance_wm2,
    org_id::text                      as org_id,
    source::text                      as source
from {{ source('silver', 'market__weather') }}
