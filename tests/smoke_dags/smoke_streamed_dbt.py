"""Airflow DAG for the streamed smoke test: a streamed per-node DAG under a real scheduler/triggerer.

tests/test_streamed_smoke.py passes the generated project (tests/render_project.py) in
``DLH_SMOKE_STREAMED_DIR`` and its DuckDB connection as ``smoke_stream_duck``. Without that variable
(the other smoke test shares this folder) the file defines no DAG, so it never shows as an import error.
``smoke_mapped_boom``: the same project in the mapped layout (one mapped task over the nodes) with the
failing model ``boom`` (its child ``boom_child`` skipped), on a DuckDB file of its own.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_SMOKE_STREAMED_DIR")

if PROJECT:
    streamed_dag = dbt_dag("smoke_streamed_dbt", DbtProject(project_dir=PROJECT, conn_id="smoke_stream_duck",
                                                            execution="streamed"),
                           schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["dbt-smoke"])
    mapped_dag = dbt_dag("smoke_mapped_boom", DbtProject(project_dir=PROJECT, conn_id="smoke_mapped_duck",
                                                         execution="streamed", node_layout="mapped",
                                                         vars={"boom": True}),
                         schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["dbt-smoke"])
