"""Airflow DAG for the scheduler smoke test: one deferrable dbt build, run by a real scheduler/triggerer.

tests/test_scheduler_smoke.py points ``[core] dags_folder`` of its child Airflow processes here and
passes the dbt project to run in ``DLH_SMOKE_PROJECT_DIR`` (a private copy of the demo project).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

PROJECT = os.environ.get("DLH_SMOKE_PROJECT_DIR", "/nonexistent")

with DAG("smoke_deferrable_dbt", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         tags=["dbt-smoke"]):
    DbtOperator(task_id="dbt_build", command="build", dbt_project_dir=PROJECT, conn_id="smoke_duck",
                deferrable=True, defer_after=0, check_interval=1)
