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
