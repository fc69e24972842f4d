"""Streamed per-node DAGs with one failing model, for the separate-hosts test (tests/test_store_namespaces.py):
the producer detached (LocalExecutor's default with a store) and as a sync task (``sync_producer=True``).

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
    # defer_after=0: the producer defers at once, so its trigger (another namespace) watches it through the store
    for dag_id, args in (("store_streamed_smoke", {"defer_after": 0}), ("store_streamed_sync", {"sync_producer": True})):
        globals()[dag_id] = dbt_dag(
            dag_id, DbtProject(project_dir=PROJECT, conn_id="store_smoke_duck", execution="streamed",
                               vars={"boom": True}, operator_args=args),
            schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["dbt-smoke"])
