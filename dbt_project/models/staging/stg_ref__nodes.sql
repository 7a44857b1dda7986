select node, zone, latitude, longitude
from {{ source('silver', 'ref__nodes') }}
