{#- One row per non-deleted Salesforce account, typed; see macros/staging.sql. -#}
{{ sf_staging_model('account') }}
