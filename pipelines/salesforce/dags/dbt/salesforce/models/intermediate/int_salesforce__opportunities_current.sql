{#- Current state of every live Salesforce opportunity, one row per opportunity_id; see macros/intermediate.sql. -#}
{{ config(
    unique_key='opportunity_id',
    post_hook="{{ sf_propagate_deletes('opportunity', 'opportunity_id') }}",
) }}
{{ sf_current_state('opportunity') }}
