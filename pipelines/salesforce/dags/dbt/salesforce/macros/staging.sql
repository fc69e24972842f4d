{#- The body of stg_salesforce__<entities>: one row per non-deleted record of ``entity``, typed by the
    type policy in salesforce_columns.sql. Values that do not cast are NULL and counted in
    _cast_failures; raw rows are not deduplicated here, so a duplicate id in raw fails the unique test. -#}
{% macro sf_staging_model(entity) -%}
with cleaned as (
    {{ sf_cleaned_select(entity, source('salesforce', entity)) }}
),

typed as (
    select
        {{- sf_typed_columns(entity) }}
    from cleaned
)

select
    {{ sf_column_names(entity) }},
    {{ sf_cast_failures(entity) }} as _cast_failures
from typed
where coalesce(is_deleted, false) = false
{%- endmacro %}
