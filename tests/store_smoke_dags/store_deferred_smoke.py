"""DbtOperator tasks for the separate-hosts test (tests/test_store_namespaces.py): a deferrable one that
succeeds, one that sleeps in PostgreSQL until it is marked failed, and a sync one whose first try fails
(its retry runs after the test moved the scheduler to a new namespace). The state store comes from the
environment; the projects from DLH_STORE_SMOKE_DIR (DuckDB) and DLH_STORE_SLOW_DIR (PostgreSQL).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False, "tags": ["dbt-smoke"]}

if os.environ.get("DLH_STORE_SMOKE_DIR"):
    with DAG("store_deferred_build", **WHEN):
        DbtOperator(task_id="dbt", command="build", select="+mart_1", dbt_project_dir=os.environ["DLH_STORE_SMOKE_DIR"],
                    conn_id="store_smoke_duck", deferrable=True, defer_after=0, check_interval=1)
    with DAG("store_deferred_kill", **WHEN):
        DbtOperator(task_id="dbt", command="build", dbt_project_dir=os.environ["DLH_STORE_SLOW_DIR"],
                    conn_id="store_smoke_pg", deferrable=True, defer_after=0, check_interval=1, cancel_grace=10)
    with DAG("store_retry_across", **WHEN):
        DbtOperator(task_id="dbt", command="build", select="+flaky", exclude="test_type:data", vars={"flaky": True},
                    dbt_project_dir=os.environ["DLH_STORE_SMOKE_DIR"], conn_id="store_smoke_duck",
                    env_vars={"DLH_FLAKY_CSV": os.environ["DLH_STORE_FLAKY_CSV"]}, retries=1,
                    retry_delay=timedelta(seconds=25))
