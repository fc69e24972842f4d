{#- One row per non-deleted Salesforce opportunity, typed; see macros/staging.sql. -#}
{{ sf_staging_model('opportunity') }}
