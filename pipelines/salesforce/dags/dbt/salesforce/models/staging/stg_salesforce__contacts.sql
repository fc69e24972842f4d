{#- One row per non-deleted Salesforce contact, typed by the type policy in macros/salesforce_columns.sql.
    Values that do not cast are NULL and counted in _cast_failures; raw rows are not deduplicated
    here, so a duplicate id in raw fails the unique test. -#}
{%- set entity = 'contact' -%}

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
