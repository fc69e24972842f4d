select
    id as order_id,
    customer_id,
    cast(ordered_at as timestamp) as ordered_at,
    status,
    {{ demo_pkg.cents_to_dollars('amount_cents') }} as amount
from {{ ref('raw_orders') }}
