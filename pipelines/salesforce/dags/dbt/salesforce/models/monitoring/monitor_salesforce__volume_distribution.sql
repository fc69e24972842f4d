{#- Info tier: records volumes and distributions of the raw Salesforce tables on every run, never
    fails. Appends one row per (table, metric, dimension) per dbt invocation.

    It reads the sources directly (through the same cleaning and safe casts as staging), not the
    staging models: a failing error-severity test on staging skips everything downstream of it in
    `dbt build`, and the runs with bad data are exactly the ones worth recording.

    Metrics per table: row_count (all raw rows), deleted_rows, live_rows, cast_failure_rows and
    cast_failure_share (live rows with at least one value that did not cast); for opportunity also
    opportunity_count_by_stage (dimension = stage name, '(none)' when empty) and amount_by_stage. -#}
{{ config(on_schema_change='append_new_columns') }}

{%- set entities = ['account', 'contact', 'opportunity'] %}

with
{%- for entity in entities %}
{{ entity }}_typed as (
    select
        {{- sf_typed_columns(entity) }}
    from (
        {{ sf_cleaned_select(entity, source('salesforce', entity)) }}
    ) as cleaned
),

{{ entity }}_flagged as (
    select
        coalesce(is_deleted, false) as is_deleted,
        {{ sf_cast_failures(entity) }} as cast_failures
        {%- if entity == 'opportunity' %},
        coalesce(stage_name, '(none)') as stage_name,
        amount
        {%- endif %}
    from {{ entity }}_typed
),

{{ entity }}_totals as (
    select
        count(*) as row_count,
        sum(case when is_deleted then 1 else 0 end) as deleted_rows,
        sum(case when is_deleted then 0 else 1 end) as live_rows,
        sum(case when not is_deleted and cast_failures > 0 then 1 else 0 end) as cast_failure_rows
    from {{ entity }}_flagged
),

{{ entity }}_metrics as (
    {%- set table_name = 'raw_salesforce.' ~ entity %}
    select '{{ table_name }}' as table_name, 'row_count' as metric, '' as dimension,
           1.0 * row_count as metric_value from {{ entity }}_totals
    union all
    select '{{ table_name }}', 'deleted_rows', '', 1.0 * coalesce(deleted_rows, 0) from {{ entity }}_totals
    union all
    select '{{ table_name }}', 'live_rows', '', 1.0 * coalesce(live_rows, 0) from {{ entity }}_totals
    union all
    select '{{ table_name }}', 'cast_failure_rows', '', 1.0 * coalesce(cast_failure_rows, 0)
    from {{ entity }}_totals
    union all
    select '{{ table_name }}', 'cast_failure_share', '',
           case when live_rows > 0 then 1.0 * cast_failure_rows / live_rows else 0 end
    from {{ entity }}_totals
    {%- if entity == 'opportunity' %}
    union all
    select '{{ table_name }}', 'opportunity_count_by_stage', stage_name, 1.0 * count(*)
    from {{ entity }}_flagged
    where not is_deleted
    group by stage_name
    union all
    select '{{ table_name }}', 'amount_by_stage', stage_name, 1.0 * coalesce(sum(amount), 0)
    from {{ entity }}_flagged
    where not is_deleted
    group by stage_name
    {%- endif %}
),
{%- endfor %}

metrics as (
    {%- for entity in entities %}
    select * from {{ entity }}_metrics
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
)

select
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}+00:00' as {{ sf_type('timestamptz') }}) as run_started_at,
    cast('{{ invocation_id }}' as {{ sf_type('text') }}) as invocation_id,
    cast(table_name as {{ sf_type('text') }}) as table_name,
    cast(metric as {{ sf_type('text') }}) as metric,
    cast(dimension as {{ sf_type('text') }}) as dimension,
    cast(metric_value as {{ sf_type('numeric') }}) as metric_value
from metrics
