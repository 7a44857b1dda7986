-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    asset_id::text                    as asset_id,
    org_id::text                      as org_id,
    zone::text                        as zone,
    name::text                        as name,
    lower(technology)::text           as technology,
    capacity_mw::double precision     as capacity_mw,
    energy_mwh::double precision      as energy_mwh,
    marginal_cost::double precision   as marginal_cost,
    lower(status)::text               as status,
    updated_at::timestamptz           as updated_at
from {{ source('silver', 'trading__assets') }}
