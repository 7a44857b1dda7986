{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key=['market_date'],
    tags=['partitioned'], on_schema_change='append_new_columns',
    indexes=[{'columns': ['org_id', 'market_date']}]
) }}
-- Net position per org, zone and delivery hour: cleared bids plus trades that are not the execution of a
-- bid (those are already counted through the bid). Long = bought > sold.
with legs as (
    select org_id, zone, delivery_start, market_date, side, cleared_quantity_mw as quantity_mw, cash_flow
    from {{ ref('fct_bids') }}
    where is_accepted and {{ market_date_window('market_date') }}
    union all
    select org_id, zone, delivery_start, market_date, side, quantity_mw, cash_flow
    from {{ ref('fct_trades') }}
    where bid_id is null and {{ market_date_window('market_date') }}
)
select
    org_id,
    zone,
    delivery_start,
    market_date,
    sum(case when side = 'buy' then quantity_mw else 0 end)  as bought_mwh,
    sum(case when side = 'sell' then quantity_mw else 0 end) as sold_mwh,
    sum(case when side = 'buy' then quantity_mw else -quantity_mw end) as net_position_mwh,
    sum(cash_flow)                                           as cash_flow
from legs
group by 1, 2, 3, 4
