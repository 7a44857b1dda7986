select n.node, n.zone, n.latitude, n.longitude, z.timezone, z.currency
from {{ ref('stg_ref__nodes') }} as n
join {{ ref('stg_ref__zones') }} as z on z.zone = n.zone
