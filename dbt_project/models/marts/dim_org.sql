select org_id, name, country
from {{ ref('stg_ref__organizations') }}
