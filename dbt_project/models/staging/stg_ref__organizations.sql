select org_id, name, country
from {{ source('silver', 'ref__organizations') }}
