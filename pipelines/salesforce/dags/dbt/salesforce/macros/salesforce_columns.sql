{#- The type policy: every landed Salesforce column, its readable name and its type kind.

    kind      type                        used for
    id        text                        Salesforce ids
    text      text                        free text and picklists
    numeric   numeric(38, 6)              money, probability
    integer   integer                     counts
    boolean   boolean                     checkbox fields
    date      date                        business dates
    timestamp timestamp with time zone    operational timestamps (createddate, systemmodstamp)
    native    timestamp with time zone    extracted_at, typed by the extractor already

    Everything but `native` lands as text; blank values are missing values, and a value that does
    not cast becomes NULL and is counted in _cast_failures (see sf_safe_cast). isdeleted only
    filters rows in staging and is not part of the models. -#}
{% macro sf_columns(entity) -%}
    {%- set specs = {
        'account': [
            {'source': 'id', 'name': 'account_id', 'kind': 'id'},
            {'source': 'name', 'name': 'account_name', 'kind': 'text'},
            {'source': 'type', 'name': 'account_type', 'kind': 'text'},
            {'source': 'industry', 'name': 'industry', 'kind': 'text'},
            {'source': 'annualrevenue', 'name': 'annual_revenue', 'kind': 'numeric'},
            {'source': 'numberofemployees', 'name': 'number_of_employees', 'kind': 'integer'},
            {'source': 'billingcountry', 'name': 'billing_country', 'kind': 'text'},
            {'source': 'ownerid', 'name': 'owner_id', 'kind': 'id'},
            {'source': 'createddate', 'name': 'created_date', 'kind': 'timestamp'},
            {'source': 'systemmodstamp', 'name': 'system_modstamp', 'kind': 'timestamp'},
            {'source': 'extracted_at', 'name': 'extracted_at', 'kind': 'native'},
        ],
        'contact': [
            {'source': 'id', 'name': 'contact_id', 'kind': 'id'},
            {'source': 'accountid', 'name': 'account_id', 'kind': 'id'},
            {'source': 'firstname', 'name': 'first_name', 'kind': 'text'},
            {'source': 'lastname', 'name': 'last_name', 'kind': 'text'},
            {'source': 'email', 'name': 'email', 'kind': 'text'},
            {'source': 'title', 'name': 'title', 'kind': 'text'},
            {'source': 'leadsource', 'name': 'lead_source', 'kind': 'text'},
            {'source': 'createddate', 'name': 'created_date', 'kind': 'timestamp'},
            {'source': 'systemmodstamp', 'name': 'system_modstamp', 'kind': 'timestamp'},
            {'source': 'extracted_at', 'name': 'extracted_at', 'kind': 'native'},
        ],
        'opportunity': [
            {'source': 'id', 'name': 'opportunity_id', 'kind': 'id'},
            {'source': 'accountid', 'name': 'account_id', 'kind': 'id'},
            {'source': 'name', 'name': 'opportunity_name', 'kind': 'text'},
            {'source': 'stagename', 'name': 'stage_name', 'kind': 'text'},
            {'source': 'amount', 'name': 'amount', 'kind': 'numeric'},
            {'source': 'probability', 'name': 'probability', 'kind': 'numeric'},
            {'source': 'closedate', 'name': 'close_date', 'kind': 'date'},
            {'source': 'type', 'name': 'opportunity_type', 'kind': 'text'},
            {'source': 'leadsource', 'name': 'lead_source', 'kind': 'text'},
            {'source': 'forecastcategory', 'name': 'forecast_category', 'kind': 'text'},
            {'source': 'isclosed', 'name': 'is_closed', 'kind': 'boolean'},
            {'source': 'iswon', 'name': 'is_won', 'kind': 'boolean'},
            {'source': 'ownerid', 'name': 'owner_id', 'kind': 'id'},
            {'source': 'createddate', 'name': 'created_date', 'kind': 'timestamp'},
            {'source': 'systemmodstamp', 'name': 'system_modstamp', 'kind': 'timestamp'},
            {'source': 'extracted_at', 'name': 'extracted_at', 'kind': 'native'},
        ],
    } -%}
    {%- if entity not in specs -%}
        {{ exceptions.raise_compiler_error("sf_columns: unknown entity '" ~ entity ~ "'") }}
    {%- endif -%}
    {{ return(specs[entity]) }}
{%- endmacro %}

{#- The readable column names of an entity's typed models, comma separated (no trailing comma). -#}
{% macro sf_column_names(entity, prefix='') -%}
    {%- for c in sf_columns(entity) -%}
        {{ prefix }}{{ c.name }}{% if not loop.last %}, {% endif %}
    {%- endfor -%}
{%- endmacro %}

{#- `select` of the landed columns with blank strings turned into NULL (and text trimmed), plus
    the isdeleted flag; the input of sf_typed_columns. -#}
{% macro sf_cleaned_select(entity, relation) -%}
    select
    {%- for c in sf_columns(entity) %}
        {% if c.kind == 'native' -%}
            {{ c.source }}
        {%- else -%}
            nullif(trim({{ c.source }}), '') as {{ c.source }}
        {%- endif %},
    {%- endfor %}
        {{ sf_safe_cast("nullif(trim(isdeleted), '')", 'boolean') }} as is_deleted
    from {{ relation }}
{%- endmacro %}

{#- The typed columns (readable names) plus, for every cast column, the cleaned text it came from
    as raw__<source>; sf_cast_failures compares the two. -#}
{% macro sf_typed_columns(entity) -%}
    {%- for c in sf_columns(entity) %}
        {{ sf_safe_cast(c.source, c.kind) }} as {{ c.name }},
        {%- if c.kind not in ('id', 'text', 'native') %}
        {{ c.source }} as raw__{{ c.source }},
        {%- endif %}
    {%- endfor %}
        is_deleted
{%- endmacro %}

{#- Number of non-empty values in the row that did not cast, from sf_typed_columns' output. -#}
{% macro sf_cast_failures(entity) -%}
    cast(0
    {%- for c in sf_columns(entity) if c.kind not in ('id', 'text', 'native') %}
        + case when raw__{{ c.source }} is not null and {{ c.name }} is null then 1 else 0 end
    {%- endfor %}
    as integer)
{%- endmacro %}
