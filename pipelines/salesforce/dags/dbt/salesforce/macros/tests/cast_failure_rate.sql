{#- Model-level test: fails (one row) when the share of rows with at least one cast failure
    (failure_column > 0, by default _cast_failures) exceeds max_rate. An empty model passes. -#}
{% test cast_failure_rate(model, max_rate=0.01, failure_column='_cast_failures') %}
with counts as (
    select
        count(*) as total_rows,
        sum(case when {{ failure_column }} > 0 then 1 else 0 end) as failed_rows
    from {{ model }}
)
select
    total_rows,
    failed_rows,
    1.0 * failed_rows / total_rows as failure_rate,
    {{ max_rate }} as max_rate
from counts
where total_rows > 0
  and 1.0 * failed_rows / total_rows > {{ max_rate }}
{% endtest %}
