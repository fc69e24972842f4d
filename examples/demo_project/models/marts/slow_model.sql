{{ config(enabled=var('slow_seconds') | int > 0, materialized='table') }}
{% if target.type == 'postgres' %}
select pg_sleep({{ var('slow_seconds') }}) is null as slept
{% else %}
select true as slept
{% endif %}
