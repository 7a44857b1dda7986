-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
-- market_date is the zone-local delivery date (silver keeps the CDC columns only).
select
    b.bid_id::text                            as bid_id,
    b.org_id::text                            as org_id,
    b.asset_id::text                          as asset_id,
    b.zone::text                              as zone,
    b.delivery_start::timestamptz             as delivery_start,
    {{ local_date('b.delivery_start::timestamptz', 'z.timezone') }} as market_date,
    lower(b.side)::text                       as side,
    b.price::double precision                 as price,
    b.quantity_mw::double precision           as quantity_mw,
    lower(b.status)::text                     as status,
    b.cleared_quantity_mw::double precision   as cleared_quantity_mw,
    b.cleared_price::double precision         as cleared_price,
    b.updated_at::timestamptz                 as updated_at
from {{ source('silver', 'trading__bids') }} as b
join {{ source('silver', 'ref__zones') }} as z on z.zone = b.zone
