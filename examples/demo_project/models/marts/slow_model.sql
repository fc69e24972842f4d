-- A deliberately slow model (enabled with --vars '{slow_seconds: N}') for cancellation drills.
-- depends_on: {{ ref('stg_customers') }}
{{ config(enabled=var('slow_seconds') | int > 0, materialized='table') }}
{% if target.type == 'postgres' %}
select pg_sleep({{ var('slow_seconds') }}) is null as slept
{% else %}
select true as slept
{% endif %}
