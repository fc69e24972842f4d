"""A streamed per-node DAG with one failing model, for the separate-hosts test (tests/test_store_namespaces.py).

The state store comes from the environment (DLH_DBT_STATE_STORE and its connection), as a deployment
would set it; the project and its DuckDB connection from DLH_STORE_SMOKE_DIR and store_smoke_duck.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_STORE_SMOKE_DIR")

if PROJECT:
    boom_dag = dbt_dag("store_streamed_smoke", DbtProject(project_dir=PROJECT, conn_id="store_smoke_duck",
                                                          execution="streamed", vars={"boom": True}),
                       schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["dbt-smoke"])
