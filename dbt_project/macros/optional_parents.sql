{#- Parents a model is built without until they exist. A model lists them in `meta.optional_parents`, which
    the Dagster automation reads as well (assets/gold.py): a day of the model is built once its other parents
    hold it, and built again when an optional parent's day arrives. The KPIs are the case: the market KPIs of a
    day must not wait for the trading facts (their feed may be late, or not connected at all), since the
    real-time minute KPIs are written into the KPI table as soon as it exists. -#}

{#- `ref(name)` when the relation exists, else an empty relation with the `columns` (name: type) the model
    reads from it. Only a parent the model declares optional is accepted, so the automation and the SQL
    never disagree about it. -#}
{% macro optional_ref(name, columns) -%}
{%- set relation = ref(name) -%}
{%- if not execute -%}
{{ return(relation) }}
{%- endif -%}
{%- if name not in model.config.get('meta', {}).get('optional_parents', []) -%}
{{ exceptions.raise_compiler_error(
    "optional_ref('" ~ name ~ "') in " ~ model.name ~ ": add it to the model's meta.optional_parents") }}
{%- endif -%}
{%- if load_relation(relation) is not none -%}
{{ return(relation) }}
{%- endif -%}
{%- set typed = [] -%}
{%- for column, type in columns.items() -%}
{%- do typed.append('null::' ~ type ~ ' as ' ~ adapter.quote(column)) -%}
{%- endfor -%}
{{ return('(select ' ~ typed | join(', ') ~ ' where false)') }}
{%- endmacro %}
