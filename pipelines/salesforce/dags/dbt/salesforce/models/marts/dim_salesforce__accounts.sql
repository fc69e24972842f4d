{#- One row per live account, with its contact and opportunity counts and open pipeline. -#}
with accounts as (
    select * from {{ ref('int_salesforce__accounts_current') }}
),

contacts as (
    select account_id, count(*) as contact_count
    from {{ ref('int_salesforce__contacts_current') }}
    group by account_id
),

opportunities as (
    select
        account_id,
        count(*) as opportunity_count,
        sum(case when coalesce(is_closed, false) = false then 1 else 0 end) as open_opportunity_count,
        sum(case when coalesce(is_closed, false) = false then amount end) as open_pipeline_amount
    from {{ ref('int_salesforce__opportunities_current') }}
    group by account_id
)

select
    a.account_id,
    a.account_name,
    a.account_type,
    a.industry,
    a.annual_revenue,
    a.number_of_employees,
    a.billing_country,
    a.owner_id,
    a.created_date,
    a.system_modstamp,
    cast(coalesce(c.contact_count, 0) as integer) as contact_count,
    cast(coalesce(o.opportunity_count, 0) as integer) as opportunity_count,
    cast(coalesce(o.open_opportunity_count, 0) as integer) as open_opportunity_count,
    cast(coalesce(o.open_pipeline_amount, 0) as {{ sf_type('numeric') }}) as open_pipeline_amount,
    a._cast_failures
from accounts as a
left join contacts as c on c.account_id = a.account_id
left join opportunities as o on o.account_id = a.account_id
