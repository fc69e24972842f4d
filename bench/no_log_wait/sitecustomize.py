"""Bench-only, never shipped: node triggers that do not wait for their last log lines to be read.

``bench/per_node.py --no-log-wait`` puts this dir on the triggerer's PYTHONPATH, to count the lines
Airflow 3.3.2 loses without ``triggers.offloop.logs_delivered`` (the lines land in the triggerer's own
log when the trigger's end reaches the supervisor before them).
"""

from __future__ import annotations

import dlh_airflow_common.triggers.offloop as offloop

offloop.DELIVERY_TIMEOUT = 0.0
