{#- Models land in their custom schema exactly as configured (staging, intermediate, marts), not in
    "<target schema>_<custom schema>". Nodes without a custom schema use the target's schema. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
