"""DAGs that run dbt from another virtualenv (another dbt-core minor version) via DbtOperator.

The venv's path comes from DLH_TEST_DBT_VENV, set by the test that builds it before parsing this file.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

PROJECT = os.environ.get("DLH_TEST_PROJECT_DIR", "/nonexistent")
VENV = os.environ.get("DLH_TEST_DBT_VENV", "/nonexistent-dbt-venv")


def _dag(dag_id: str, **op_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             tags=["dbt-tests"]) as dag:
        DbtOperator(task_id="dbt", dbt_project_dir=PROJECT, command="build", conn_id="duck_venv",
                    check_interval=0.5, **op_kwargs)
    return dag


_dag("venv_sync_build", venv_path=VENV)
_dag("venv_deferred_build", venv_path=VENV, deferrable=True, defer_after=0)
_dag("venv_executable_build", dbt_executable=str(Path(VENV) / "bin" / "dbt"))
