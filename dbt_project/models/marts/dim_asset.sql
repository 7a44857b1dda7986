-- Tagged `partitioned` although it is not date-sliced: it reads the CDC staging view, which is rebuilt in the
-- partitioned run after silver and its checks, so it must be built in that run too (a cheap full rebuild).
{{ config(tags=['partitioned']) }}
-- The trading system's current asset state (CDC) wins over the seeded reference row of the same asset.
select
    coalesce(t.asset_id, r.asset_id)           as asset_id,
    coalesce(t.org_id, r.org_id)               as org_id,
    coalesce(t.zone, r.zone)                   as zone,
    coalesce(t.name, r.name)                   as name,
    coalesce(t.technology, r.technology)       as technology,
    coalesce(t.capacity_mw, r.capacity_mw)     as capacity_mw,
    coalesce(t.energy_mwh, r.energy_mwh)       as energy_mwh,
    coalesce(t.marginal_cost, r.marginal_cost) as marginal_cost,
    coalesce(t.status, 'active')               as status,
    f.is_renewable                             as is_renewable,
    t.updated_at                               as updated_at
from {{ ref('stg_trading__assets') }} as t
full outer join {{ ref('stg_ref__assets') }} as r on r.asset_id = t.asset_id
left join {{ ref('fuel_types') }} as f on f.fuel = coalesce(t.technology, r.technology)
