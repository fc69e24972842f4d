{#- The body of int_salesforce__<entities>_current: the current state of every live record of
    ``entity``, one row per <entity>_id, maintained incrementally (the model sets unique_key and the
    delete post_hook).

    Incremental runs read only staging rows with system_modstamp >= the newest one already loaded
    (>=, not >: a record sharing the boundary timestamp that landed after the last run is never
    skipped; re-reading boundary rows is harmless, delete+insert replaces them). A late edit of an
    old record carries a newer system_modstamp, so it is picked up and replaces the old version.
    Rows without a usable system_modstamp are always re-read. Duplicates keep the latest
    system_modstamp (then the latest extracted_at). Records deleted in Salesforce are removed by the
    post_hook (var salesforce_propagate_deletes). -#}
{% macro sf_current_state(entity) -%}
with changed as (
    select *
    from {{ ref('stg_salesforce__' ~ sf_plural(entity)) }}
    {%- if is_incremental() %}
    where system_modstamp >= (select max(system_modstamp) from {{ this }})
       or system_modstamp is null
       or not exists (select 1 from {{ this }} where system_modstamp is not null)
    {%- endif %}
),

ranked as (
    select
        *,
        row_number() over (
            partition by {{ entity }}_id
            order by system_modstamp desc nulls last, extracted_at desc nulls last
        ) as _version_rank
    from changed
)

select
    {{ sf_column_names(entity) }},
    _cast_failures,
    {{ sf_load_audit_columns() }}
from ranked
where _version_rank = 1
{%- endmacro %}

{#- Audit columns of the intermediate models: when and by which dbt invocation a row was written. -#}
{% macro sf_load_audit_columns() -%}
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}+00:00' as {{ sf_type('timestamptz') }}) as _loaded_at,
    cast('{{ invocation_id }}' as {{ sf_type('text') }}) as _invocation_id
{%- endmacro %}

{#- Deletes records from an intermediate table that are no longer live in staging (deleted in
    Salesforce, so filtered out by staging, or gone from raw); a post_hook, var-controlled. -#}
{% macro sf_propagate_deletes(entity, id_column) -%}
    {%- if var('salesforce_propagate_deletes', true) -%}
        delete from {{ this }}
        where {{ id_column }} not in (
            select {{ id_column }}
            from {{ ref('stg_salesforce__' ~ sf_plural(entity)) }}
            where {{ id_column }} is not null
        )
    {%- endif -%}
{%- endmacro %}

{% macro sf_plural(entity) -%}
    {{ return({'account': 'accounts', 'contact': 'contacts', 'opportunity': 'opportunities'}[entity]) }}
{%- endmacro %}
