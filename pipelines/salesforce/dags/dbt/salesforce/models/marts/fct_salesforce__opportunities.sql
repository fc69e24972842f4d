{#- One row per live opportunity with its account's name (NULL for orphans) and weighted amount. -#}
with opportunities as (
    select * from {{ ref('int_salesforce__opportunities_current') }}
),

accounts as (
    select account_id, account_name, industry, billing_country
    from {{ ref('int_salesforce__accounts_current') }}
)

select
    o.opportunity_id,
    o.account_id,
    a.account_name,
    a.industry as account_industry,
    a.billing_country as account_billing_country,
    o.opportunity_name,
    o.stage_name,
    o.amount,
    o.probability,
    -- amount * probability / 100, exact decimal arithmetic on both adapters
    cast(o.amount * o.probability * 0.01 as {{ sf_type('numeric') }}) as weighted_amount,
    o.close_date,
    o.opportunity_type,
    o.lead_source,
    o.forecast_category,
    o.is_closed,
    o.is_won,
    coalesce(o.is_closed, false) = false as is_open,
    o.owner_id,
    o.created_date,
    o.system_modstamp,
    a.account_id is not null as has_known_account,
    o._cast_failures
from opportunities as o
left join accounts as a on a.account_id = o.account_id
