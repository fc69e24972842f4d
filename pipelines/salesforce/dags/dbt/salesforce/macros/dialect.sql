{#- The few dialect-specific bits, resolved through adapter.dispatch (postgres = default__). -#}

{#- True when expr fully matches an anchored regular expression; NULL when expr is NULL. -#}
{% macro sf_regex_match(expr, pattern) -%}
    {{ return(adapter.dispatch('sf_regex_match', 'salesforce')(expr, pattern)) }}
{%- endmacro %}

{% macro default__sf_regex_match(expr, pattern) -%}
    ({{ expr }} ~ '{{ pattern }}')
{%- endmacro %}

{% macro duckdb__sf_regex_match(expr, pattern) -%}
    regexp_full_match({{ expr }}, '{{ pattern }}')
{%- endmacro %}

{#- The final cast of an already validated string. DuckDB's try_cast is a second safety net;
    PostgreSQL has no try_cast, so callers must only reach this with a validated value. -#}
{% macro sf_final_cast(expr, data_type) -%}
    {{ return(adapter.dispatch('sf_final_cast', 'salesforce')(expr, data_type)) }}
{%- endmacro %}

{% macro default__sf_final_cast(expr, data_type) -%}
    cast({{ expr }} as {{ data_type }})
{%- endmacro %}

{% macro duckdb__sf_final_cast(expr, data_type) -%}
    try_cast({{ expr }} as {{ data_type }})
{%- endmacro %}

{#- date_expr shifted by a (possibly negative) whole number of days, as a date. -#}
{% macro sf_date_add_days(date_expr, days) -%}
    {{ return(adapter.dispatch('sf_date_add_days', 'salesforce')(date_expr, days)) }}
{%- endmacro %}

{% macro default__sf_date_add_days(date_expr, days) -%}
    cast(({{ date_expr }}) + ({{ days }}) * interval '1 day' as date)
{%- endmacro %}

{% macro duckdb__sf_date_add_days(date_expr, days) -%}
    cast(({{ date_expr }}) + to_days(cast({{ days }} as integer)) as date)
{%- endmacro %}

{#- Column types of the type policy (spelled the same on both adapters). -#}
{% macro sf_type(kind) -%}
    {%- set types = {
        'text': 'text',
        'numeric': 'numeric(38, 6)',
        'integer': 'integer',
        'boolean': 'boolean',
        'date': 'date',
        'timestamptz': 'timestamp with time zone',
    } -%}
    {%- if kind not in types -%}
        {{ exceptions.raise_compiler_error("sf_type: unknown kind '" ~ kind ~ "'") }}
    {%- endif -%}
    {{ return(types[kind]) }}
{%- endmacro %}
