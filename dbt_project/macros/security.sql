{#- Tenancy (docs/data_contracts.md): every gold table with an `org_id` column gets row-level security
    with the project policy, FORCED so that the owner is bound too (see `org_rls_statements`). Readers:
    `bi_reader` (BI org roles are its members) and `optibid_api` (the NOINHERIT role the API queries as,
    created by infra/sql/080_api.sql), each granted SELECT directly.

    Org-scoped (have `org_id`: uploaded private series and trading data): dim_asset, dim_org, fct_bids,
    fct_trades, fct_positions, fct_prices_hourly, fct_prices_5min, fct_load_hourly, fct_generation_hourly,
    kpi_values. Market-wide, readable by every reader: dim_zone, dim_node, dim_calendar and the seeds.
    Nothing is listed by hand: the post-hook decides by the built table's columns, on every build. -#}

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

{#- FORCE binds a non-superuser owner as well, so a connection as the owner that took an organization scope
    sees that organization only (as infra/sql/120_api_hardening.sql does for ops/silver/ml). The owner keeps
    every row while unscoped (`owner_unscoped`): the pipeline, dbt's own tests and the BI export read as
    before. dbt runs as the owner, hence CURRENT_USER. Run after every build of the model: a full build
    recreates the table (without policies), an incremental one keeps it. Each statement runs only where its
    effect is missing: ALTER TABLE and CREATE POLICY take an ACCESS EXCLUSIVE lock until dbt commits, which
    on every incremental build would stall the API's reads and the real-time KPI writer behind it. A changed
    policy text therefore needs a full refresh (or a migration) to reach existing tables. -#}
{% macro org_rls_statements(relation) -%}
DO $rls$
DECLARE
    target oid := (
        SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = '{{ relation.schema }}' AND c.relname = '{{ relation.identifier }}'
    );
BEGIN
    IF NOT (SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = target) THEN
        ALTER TABLE {{ relation }} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {{ relation }} FORCE ROW LEVEL SECURITY;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = target AND polname = 'org_isolation') THEN
        CREATE POLICY org_isolation ON {{ relation }}
            USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = target AND polname = 'owner_unscoped') THEN
        CREATE POLICY owner_unscoped ON {{ relation }} TO CURRENT_USER
            USING (coalesce(current_setting('optibid.org_id', true), '') = '')
            WITH CHECK (coalesce(current_setting('optibid.org_id', true), '') = '');
    END IF;
END
$rls$;
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
