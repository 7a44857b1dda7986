-- Every KPI value names a catalogued KPI at one of the grains the catalog lists for it.
select v.kpi_code, v.grain, count(*) as n_rows
from {{ ref('kpi_values') }} as v
left join {{ ref('kpi_catalog') }} as c on c.kpi_code = v.kpi_code
where c.kpi_code is null
   or not (v.grain = any (string_to_array(c.grains, ',')))
group by 1, 2
