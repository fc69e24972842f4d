{#- Rows whose value lies outside [min_value, max_value] (either bound optional, both inclusive).
    NULLs pass: missing or uncastable values are the job of not_null and cast_failure_rate. -#}
{% test value_in_range(model, column_name, min_value=none, max_value=none) %}
    {%- if min_value is none and max_value is none -%}
        {{ exceptions.raise_compiler_error("value_in_range needs min_value and/or max_value") }}
    {%- endif %}
select {{ column_name }} as out_of_range_value
from {{ model }}
where {{ column_name }} is not null
  and (
    {%- if min_value is not none %} {{ column_name }} < {{ min_value }}{% endif %}
    {%- if min_value is not none and max_value is not none %} or{% endif %}
    {%- if max_value is not none %} {{ column_name }} > {{ max_value }}{% endif %}
  )
{% endtest %}
