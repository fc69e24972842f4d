"""The mapped per-node layout on the generated project (tests/render_project.py) with its failing model.

tests/test_mapped.py runs it with dag.test() (also on Airflow 3.1, `make test-compat`); the connection
render_duck comes from tests/conftest.py.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

mapped_boom_dag = dbt_dag(
    "mapped_streamed_duck_boom",
    DbtProject(project_dir=os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent"), conn_id="render_duck",
               execution="streamed", node_layout="mapped", vars={"boom": True},
               operator_args={"keep_target_artifacts": True}),
    schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
