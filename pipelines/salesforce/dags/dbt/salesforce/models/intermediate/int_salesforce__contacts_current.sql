{#- Current state of every live Salesforce contact, one row per contact_id; see macros/intermediate.sql. -#}
{{ config(
    unique_key='contact_id',
    post_hook="{{ sf_propagate_deletes('contact', 'contact_id') }}",
) }}
{{ sf_current_state('contact') }}
