"""Airflow DAG for the scheduler kill test: a slow dbt build on PostgreSQL, once sync and once deferred.

tests/test_scheduler_smoke.py marks both tasks failed through the api-server while dbt waits in
``pg_sleep`` and checks that Airflow's kill reaches dbt and the query, and that nothing is left.
Airflow 3.3 tells the deferred task's trigger (on_kill); below 3.3 the supervisor notices that no
trigger watches the run any more (``unwatched_timeout``).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

PROJECT = os.environ.get("DLH_SMOKE_PROJECT_DIR", "/nonexistent")
# Distinct sleeps, so the test tells the two queries apart in pg_stat_activity.
SLOW = {"sync": 600, "deferred": 601}

with DAG("smoke_kill_dbt", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["dbt-smoke"]):
    for mode in ("sync", "deferred"):
        DbtOperator(task_id=f"slow_{mode}", command="build", select="+slow_model", dbt_project_dir=PROJECT,
                    conn_id="smoke_pg", vars={"slow_seconds": SLOW[mode]}, schema_override=f"smoke_{mode}",
                    deferrable=mode == "deferred", defer_after=0, check_interval=1, cancel_grace=10,
                    # Below Airflow 3.3 the killed trigger's silence is the kill: noticed after 15 s.
                    unwatched_timeout=15)
