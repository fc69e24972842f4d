{#- Safe casts: text -> typed value, NULL (never an error) when the text is not a valid value, on
    DuckDB and PostgreSQL alike. PostgreSQL has no try_cast, so every value is validated with the
    same portable checks on both adapters before the final cast (sf_final_cast); only the regex
    operator and the final cast are dialect-specific. expr must be a cleaned text expression
    (trimmed, blank -> NULL). CASE evaluates its branches in order, so a cast inside a branch only
    ever sees a value that passed the checks before it. -#}

{% macro sf_safe_cast(expr, kind) -%}
    {%- if kind in ('id', 'text') -%}
        cast({{ expr }} as {{ sf_type('text') }})
    {%- elif kind == 'native' -%}
        cast({{ expr }} as {{ sf_type('timestamptz') }})
    {%- elif kind == 'numeric' -%}
        {{ sf_safe_numeric(expr) }}
    {%- elif kind == 'integer' -%}
        {{ sf_safe_integer(expr) }}
    {%- elif kind == 'boolean' -%}
        {{ sf_safe_boolean(expr) }}
    {%- elif kind == 'date' -%}
        {{ sf_safe_date(expr) }}
    {%- elif kind == 'timestamp' -%}
        {{ sf_safe_timestamptz(expr) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("sf_safe_cast: unknown kind '" ~ kind ~ "'") }}
    {%- endif -%}
{%- endmacro %}

{#- Decimal numbers, optionally signed and with an exponent (1500.50, -3, .5, 1.5E8); at most 40
    characters and below 1e32 in magnitude, so they fit numeric(38, 6) (rounded to 6 decimals). -#}
{% macro sf_safe_numeric(expr) -%}
    case when length({{ expr }}) <= 40
          and {{ sf_regex_match(expr, '^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]{1,2})?$') }}
        then case when abs(cast({{ expr }} as double precision)) < 1e32
            then {{ sf_final_cast(expr, sf_type('numeric')) }} end
    end
{%- endmacro %}

{#- Whole numbers up to 9 digits (always within integer range); "1500.0" is accepted. -#}
{% macro sf_safe_integer(expr) -%}
    case when {{ sf_regex_match(expr, '^[+-]?[0-9]{1,9}([.]0*)?$') }}
        then {{ sf_final_cast(sf_final_cast(expr, sf_type('numeric')), sf_type('integer')) }}
    end
{%- endmacro %}

{#- true/t/1/yes/y and false/f/0/no/n, any case. -#}
{% macro sf_safe_boolean(expr) -%}
    case when lower({{ expr }}) in ('true', 't', '1', 'yes', 'y') then true
         when lower({{ expr }}) in ('false', 'f', '0', 'no', 'n') then false
    end
{%- endmacro %}

{#- True when the first 10 characters of s, already known to be NNNN-NN-NN, are a real calendar
    date (year >= 1, month 1-12, day within the month, leap years included). -#}
{% macro sf_is_valid_ymd(s) -%}
    {%- set y = "cast(substr(" ~ s ~ ", 1, 4) as integer)" -%}
    {%- set m = "cast(substr(" ~ s ~ ", 6, 2) as integer)" -%}
    {%- set d = "cast(substr(" ~ s ~ ", 9, 2) as integer)" -%}
    ({{ y }} >= 1 and {{ m }} between 1 and 12 and {{ d }} between 1 and
        case when {{ m }} = 2 then
                case when ({{ y }} % 4 = 0 and {{ y }} % 100 <> 0) or {{ y }} % 400 = 0 then 29 else 28 end
             when {{ m }} in (4, 6, 9, 11) then 30
             else 31
        end)
{%- endmacro %}

{#- ISO dates YYYY-MM-DD that exist in the calendar ('2026-02-30' and 'not a date' give NULL). -#}
{% macro sf_safe_date(expr) -%}
    case when {{ sf_regex_match(expr, '^[0-9]{4}-[0-9]{2}-[0-9]{2}$') }}
        then case when {{ sf_is_valid_ymd(expr) }} then {{ sf_final_cast(expr, sf_type('date')) }} end
    end
{%- endmacro %}

{#- ISO-8601 timestamps as Salesforce writes them (2026-03-04T10:15:30.000+0000), also with a space
    separator, Z, +hh:mm or +hh offsets, without seconds or fraction, or date only. A value without an
    offset is UTC, so the result never depends on the session time zone. -#}
{% macro sf_safe_timestamptz(expr) -%}
    {%- set pattern = '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?$' -%}
    {#- what follows the date: '' or hh:mm[:ss[.ffffff]][offset] -#}
    {%- set rest = "regexp_replace(" ~ expr ~ ", '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]?', '')" -%}
    {%- set tm = "regexp_replace(" ~ rest ~ ", '[Zz+-].*$', '')" -%}
    {%- set off = "regexp_replace(" ~ rest ~ ", '^[0-9:.]*', '')" -%}
    {#- offset as +hh:mm -#}
    {%- set offn -%}
        (case when {{ off }} in ('', 'Z', 'z') then '+00:00'
              when length({{ off }}) = 3 then {{ off }} || ':00'
              when length({{ off }}) = 5 then substr({{ off }}, 1, 3) || ':' || substr({{ off }}, 4, 2)
              else {{ off }} end)
    {%- endset -%}
    case when {{ sf_regex_match(expr, pattern) }} then
        case when {{ sf_is_valid_ymd(expr) }}
              and (case when {{ tm }} = '' then true
                        when cast(substr({{ tm }}, 1, 2) as integer) > 23 then false
                        when cast(substr({{ tm }}, 4, 2) as integer) > 59 then false
                        when length({{ tm }}) < 8 then true
                        when cast(substr({{ tm }}, 7, 2) as integer) > 59 then false
                        else true end)
              and cast(substr({{ offn }}, 2, 2) as integer) <= 14
              and cast(substr({{ offn }}, 5, 2) as integer) <= 59
            then {{ sf_final_cast(
                "substr(" ~ expr ~ ", 1, 10) || ' ' || (case when " ~ tm ~ " = '' then '00:00:00' else "
                ~ tm ~ " end) || " ~ offn,
                sf_type('timestamptz')) }}
        end
    end
{%- endmacro %}
