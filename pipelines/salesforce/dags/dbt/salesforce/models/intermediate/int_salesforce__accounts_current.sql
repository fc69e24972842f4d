{#- Current state of every live Salesforce account, one row per account_id; see macros/intermediate.sql. -#}
{{ config(
    unique_key='account_id',
    post_hook="{{ sf_propagate_deletes('account', 'account_id') }}",
) }}
{{ sf_current_state('account') }}
