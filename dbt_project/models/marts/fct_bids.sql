{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['org_id', 'market_date']}]
) }}
-- Current state of each bid. Delivery periods are one hour, so MW and MWh coincide per bid.
select
    b.bid_id,
    b.org_id,
    b.asset_id,
    b.zone,
    b.delivery_start,
    b.market_date,
    b.side,
    b.price,
    b.quantity_mw,
    b.status,
    b.status in ('accepted', 'partially_accepted')                              as is_accepted,
    b.status in ('accepted', 'partially_accepted', 'rejected')                  as is_decided,
    case when b.status in ('accepted', 'partially_accepted')
         then coalesce(b.cleared_quantity_mw, 0) else 0 end                     as cleared_quantity_mw,
    b.cleared_price,
    case when b.status in ('accepted', 'partially_accepted')
         then coalesce(b.cleared_quantity_mw, 0) * b.cleared_price
              * case when b.side = 'sell' then 1 else -1 end
         else 0 end                                                             as cash_flow,
    z.currency,
    b.updated_at
from {{ ref('stg_trading__bids') }} as b
join {{ ref('stg_ref__zones') }} as z on z.zone = b.zone
where {{ market_date_window('b.market_date') }}
