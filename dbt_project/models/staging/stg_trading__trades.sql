-- Partitioned with its silver table: a daily run rebuilds it after the silver partition and its checks.
{{ config(tags=['partitioned']) }}
select
    t.trade_id::text                  as trade_id,
    t.org_id::text                    as org_id,
    t.bid_id::text                    as bid_id,
    t.zone::text                      as zone,
    t.delivery_start::timestamptz     as delivery_start,
    {{ local_date('t.delivery_start::timestamptz', 'z.timezone') }} as market_date,
    lower(t.side)::text               as side,
    t.price::double precision         as price,
    t.quantity_mw::double precision   as quantity_mw,
    t.counterparty::text              as counterparty,
    t.traded_at::timestamptz          as traded_at
from {{ source('silver', 'trading__trades') }} as t
join {{ source('silver', 'ref__zones') }} as z on z.zone = t.zone
