{#- Models land in exactly the schema they name (`gold`, `gold_staging`), never `<target>_<custom>`:
    the API, BI and RLS policies address `gold.<model>` directly. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema | trim }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
