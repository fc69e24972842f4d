{#- One row per non-deleted Salesforce contact, typed; see macros/staging.sql. -#}
{{ sf_staging_model('contact') }}
