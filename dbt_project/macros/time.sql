{#- Time helpers. Hours are zone-local hours expressed in UTC: an hour starts where the zone's local
    minute is 0, which is also right for half-hour offsets (Asia/Kolkata) and, unlike truncating the local
    wall-clock time, keeps the two 01:00 hours of a DST fall-back day apart. -#}

{% macro local_hour_start(ts, tz) -%}
(date_trunc('minute', {{ ts }}) - extract(minute from ({{ ts }} at time zone {{ tz }})) * interval '1 minute')
{%- endmacro %}

{% macro local_date(ts, tz) -%}
(({{ ts }}) at time zone {{ tz }})::date
{%- endmacro %}

{% macro local_day_start(date_expr, tz) -%}
(({{ date_expr }})::timestamp at time zone {{ tz }})
{%- endmacro %}

{#- The partition window [lo, hi] (market-local dates, inclusive; none when not given): vars `min_date`/`max_date`
    on the command line, else the OPTIBID_DBT_MIN_DATE/OPTIBID_DBT_MAX_DATE variables that the pipeline's runs
    set. The variables are read only when executing: a variable read while parsing makes dbt re-parse its models
    whenever it changes, and new `--vars` make it re-parse the whole project, which on every partition run
    cost seconds of CPU. -#}
{% macro partition_bounds() -%}
{%- set lo = var('min_date', none) -%}
{%- set hi = var('max_date', none) -%}
{%- if execute and not (lo or hi) -%}
{%- set lo = env_var('OPTIBID_DBT_MIN_DATE', '') or none -%}
{%- set hi = env_var('OPTIBID_DBT_MAX_DATE', '') or none -%}
{%- endif -%}
{{ return([lo, hi]) }}
{%- endmacro %}

{#- A predicate restricting `column` to the partition window (`partition_bounds`); `true` when no window is
    given, i.e. a full rebuild. -#}
{% macro market_date_window(column='market_date') -%}
{%- set lo, hi = partition_bounds() -%}
{%- if lo and hi -%}
{{ column }} between '{{ lo }}'::date and '{{ hi }}'::date
{%- elif lo -%}
{{ column }} >= '{{ lo }}'::date
{%- elif hi -%}
{{ column }} <= '{{ hi }}'::date
{%- else -%}
true
{%- endif -%}
{%- endmacro %}

{% macro is_peak_hour(local_ts, peak_start_hour, peak_end_hour, weekdays_only) -%}
(extract(hour from {{ local_ts }}) >= {{ peak_start_hour }}
 and extract(hour from {{ local_ts }}) < {{ peak_end_hour }}
 and (not {{ weekdays_only }} or extract(isodow from {{ local_ts }}) < 6))
{%- endmacro %}

{#- Pre-hook of the partitioned incremental models: empty the window first, so a market date whose rows
    disappeared from silver (a deleted bid, a withdrawn series) disappears from gold too; delete+insert on
    its own only replaces dates present in the new batch. -#}
{% macro delete_market_date_window() -%}
{%- set lo, hi = partition_bounds() -%}
{%- if model.config.materialized == 'incremental' and is_incremental() and (lo or hi) -%}
delete from {{ this }} where {{ market_date_window('market_date') }}
{%- else -%}
select 1
{%- endif -%}
{%- endmacro %}
