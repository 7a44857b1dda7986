-- Positions add up to their legs: cleared bids plus trades not linked to a bid.
with legs as (
    select org_id, sum(cash_flow) as cash_flow from {{ ref('fct_bids') }} where is_accepted group by 1
    union all
    select org_id, sum(cash_flow) from {{ ref('fct_trades') }} where bid_id is null group by 1
),
expected as (select org_id, sum(cash_flow) as cash_flow from legs group by 1),
actual as (select org_id, sum(cash_flow) as cash_flow from {{ ref('fct_positions') }} group by 1)
select e.org_id, e.cash_flow as expected, a.cash_flow as actual
from expected as e
full outer join actual as a on a.org_id = e.org_id
-- relative tolerance: sums of millions of currency units differ in the last float digits by summation order
where abs(coalesce(e.cash_flow, 0) - coalesce(a.cash_flow, 0)) > 1e-9 * greatest(1, abs(coalesce(e.cash_flow, 0)))
