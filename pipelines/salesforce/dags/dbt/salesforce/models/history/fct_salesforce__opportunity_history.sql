{#- Daily snapshot of every live opportunity: one row per opportunity_id per snapshot_date.

    snapshot_date = var('snapshot_date') or current_date. Re-running a day replaces that day's rows
    (the pre_hook clears the day, so opportunities deleted since the earlier run disappear too;
    delete+insert on the unique key does the rest). Retention: the post_hook deletes snapshot days
    more than var('history_retention_days', 90) days before snapshot_date. -#}
{{ config(
    unique_key=['opportunity_id', 'snapshot_date'],
    pre_hook="{% if is_incremental() %}delete from {{ this }} where snapshot_date = {{ sf_snapshot_date() }}{% endif %}",
    post_hook="delete from {{ this }} where snapshot_date < {{ sf_date_add_days(sf_snapshot_date(), -1 * sf_history_retention_days()) }}",
) }}

select
    {{ sf_snapshot_date() }} as snapshot_date,
    opportunity_id,
    account_id,
    stage_name,
    amount,
    probability,
    weighted_amount,
    close_date,
    forecast_category,
    is_closed,
    is_won,
    is_open,
    owner_id,
    system_modstamp,
    cast('{{ invocation_id }}' as {{ sf_type('text') }}) as _invocation_id
from {{ ref('fct_salesforce__opportunities') }}
