"""DAGs of a new user's first hour: a streamed run whose producer fails before it starts dbt.

tests/test_first_hour.py runs them with dag.test() and ``airflow dags test``; the producer fails at
once there because the test unsets DLH_DBT_SHARED_RUNTIME_ROOT (streamed mode needs it declared).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}

producer_fails_dag = dbt_dag("first_hour_producer_fails", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", execution="streamed"), **WHEN)
