{#- Open pipeline (opportunities not closed) per stage and owner, for the pipeline dashboard;
    weighted_amount = sum(amount * probability / 100). -#}
select
    stage_name,
    owner_id,
    cast(count(*) as integer) as opportunity_count,
    cast(coalesce(sum(amount), 0) as {{ sf_type('numeric') }}) as total_amount,
    cast(coalesce(sum(weighted_amount), 0) as {{ sf_type('numeric') }}) as weighted_amount
from {{ ref('fct_salesforce__opportunities') }}
where is_open
group by stage_name, owner_id
