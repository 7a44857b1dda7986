select asset_id, org_id, zone, name, lower(technology) as technology, capacity_mw, energy_mwh, marginal_cost
from {{ source('silver', 'ref__assets') }}
