{#- Tenancy (docs/data_contracts.md): every gold table with an `org_id` column gets row-level security
    with the project policy. Readers: `bi_reader` (BI org roles are its members) and `optibid_api` (the
    NOINHERIT role the API queries as, created by infra/sql/080_api.sql), each granted SELECT directly. -#}

{% macro ensure_reader_role() -%}
{#- Roles are cluster-wide and several databases (tests, dev) share a cluster: create only when absent
    and tolerate a concurrent creator. optibid_api is normally created by the API migration already. -#}
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bi_reader') THEN
        CREATE ROLE bi_reader NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'optibid_api') THEN
        CREATE ROLE optibid_api NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA {{ target.schema }} TO bi_reader, optibid_api;
{%- endmacro %}

{% macro org_rls_statements(relation) -%}
ALTER TABLE {{ relation }} ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS org_isolation ON {{ relation }};
CREATE POLICY org_isolation ON {{ relation }}
    USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
{%- endmacro %}

{% macro enable_org_rls() -%}
{#- Post-hook: a no-op for views and for tables without `org_id`. -#}
{%- if execute and model.config.materialized in ('table', 'incremental') -%}
    {%- set columns = adapter.get_columns_in_relation(this) -%}
    {%- if 'org_id' in columns | map(attribute='name') | map('lower') | list -%}
        {{ org_rls_statements(this) }}
    {%- else -%}
        SELECT 1
    {%- endif -%}
{%- else -%}
    SELECT 1
{%- endif -%}
{%- endmacro %}
