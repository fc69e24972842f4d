{#- One row per live contact with its account's name (NULL when the account is unknown). -#}
with contacts as (
    select * from {{ ref('int_salesforce__contacts_current') }}
),

accounts as (
    select account_id, account_name from {{ ref('int_salesforce__accounts_current') }}
)

select
    c.contact_id,
    c.account_id,
    a.account_name,
    c.first_name,
    c.last_name,
    nullif(trim(coalesce(c.first_name, '') || ' ' || coalesce(c.last_name, '')), '') as full_name,
    c.email,
    c.title,
    c.lead_source,
    c.created_date,
    c.system_modstamp,
    a.account_id is not null as has_known_account,
    c._cast_failures
from contacts as c
left join accounts as a on a.account_id = c.account_id
