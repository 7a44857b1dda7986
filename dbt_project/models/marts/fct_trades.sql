{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['org_id', 'market_date']}]
) }}
select
    t.trade_id,
    t.org_id,
    t.bid_id,
    t.zone,
    t.delivery_start,
    t.market_date,
    t.side,
    t.price,
    t.quantity_mw,
    t.quantity_mw * case when t.side = 'buy' then 1 else -1 end           as signed_quantity_mw,
    t.quantity_mw * t.price * case when t.side = 'sell' then 1 else -1 end as cash_flow,
    z.currency,
    t.counterparty,
    t.traded_at
from {{ ref('stg_trading__trades') }} as t
join {{ ref('stg_ref__zones') }} as z on z.zone = t.zone
where {{ market_date_window('t.market_date') }}
