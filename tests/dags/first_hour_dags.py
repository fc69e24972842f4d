"""DAGs of a new user's first hour: a streamed run whose producer fails before it starts dbt, a task
whose project dir does not exist.

tests/test_first_hour.py runs them with dag.test() and ``airflow dags test``; the producer fails at
once there because the test unsets DLH_DBT_SHARED_RUNTIME_ROOT (streamed mode needs it declared).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, task

from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
MISSING = "/nonexistent/first_hour/dbt_project"
WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}

producer_fails_dag = dbt_dag("first_hour_producer_fails", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", execution="streamed"), **WHEN)

with DAG("first_hour_missing_project", **WHEN):
    DbtOperator(task_id="dbt_build", command="build", dbt_project_dir=MISSING, conn_id="render_duck")

NOTHING = ["tag:no_such_tag"]  # a selection that matches no node of the project
empty_single_dag = dbt_dag("first_hour_empty_single", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", shape="single", select=NOTHING), **WHEN)
empty_single_allowed_dag = dbt_dag("first_hour_empty_single_allowed", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", shape="single", select=NOTHING, allow_empty_selection=True),
    **WHEN)

# The producer never runs (its upstream fails), so it leaves no word in its stream dir: the node tasks
# learn from Airflow that it ended.
producer_never_runs_dag = dbt_dag("first_hour_producer_never_runs", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", execution="streamed"), **WHEN)
with producer_never_runs_dag:
    @task
    def extract_fails() -> None:
        raise RuntimeError("the extract failed")

    extract_fails() >> producer_never_runs_dag.task_dict["dbt_producer"]
