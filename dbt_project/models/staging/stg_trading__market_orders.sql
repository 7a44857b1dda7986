-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    o.order_id::text                  as order_id,
    o.org_id::text                    as org_id,
    o.zone::text                      as zone,
    o.delivery_start::timestamptz     as delivery_start,
    {{ local_date('o.delivery_start::timestamptz', 'z.timezone') }} as market_date,
    lower(o.side)::text               as side,
    o.order_type::text                as order_type,
    o.price::double precision         as price,
    o.quantity_mw::double precision   as quantity_mw,
    lower(o.status)::text             as status,
    o.updated_at::timestamptz         as updated_at
from {{ source('silver', 'trading__market_orders') }} as o
join {{ source('silver', 'ref__zones') }} as z on z.zone = o.zone
