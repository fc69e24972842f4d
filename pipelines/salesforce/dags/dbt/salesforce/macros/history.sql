{#- The snapshot day as a SQL date: var('snapshot_date') (YYYY-MM-DD) or, when unset, current_date. -#}
{% macro sf_snapshot_date() -%}
    {%- set value = var('snapshot_date', none) -%}
    {%- if value is none or (value | string | trim) in ('', 'current_date') -%}
        current_date
    {%- else -%}
        {%- set text = value | string | trim -%}
        {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
            {{ exceptions.raise_compiler_error("var snapshot_date must be YYYY-MM-DD, got '" ~ text ~ "'") }}
        {%- endif -%}
        cast('{{ text }}' as date)
    {%- endif -%}
{%- endmacro %}

{#- Number of snapshot days to keep before the snapshot day (var history_retention_days, >= 0). -#}
{% macro sf_history_retention_days() -%}
    {%- set days = var('history_retention_days', 90) | int(-1) -%}
    {%- if days < 0 -%}
        {{ exceptions.raise_compiler_error("var history_retention_days must be a whole number >= 0") }}
    {%- endif -%}
    {{ return(days) }}
{%- endmacro %}
