"""Airflow DAGs for the per-node smoke tests (tests/test_streamed_smoke.py) under a real scheduler/triggerer.

- ``smoke_nodes_duck``: isolated node tasks on DuckDB as rendered by default (one task at a time).
- ``smoke_nodes_duck_parallel``: more of the project with ``max_active_tasks=4``: node tasks run at
  once and take turns on the core's DuckDB lock.
- ``smoke_streamed_pg``: the streamed mode on PostgreSQL with a model in ``pg_sleep``, for cancelling.
- ``smoke_assets_boom`` / ``smoke_assets_ok``: node tasks building ``+boom``, where it fails / succeeds;
  ``smoke_assets_consumer`` is scheduled on the model ``boom``'s asset.

The test passes the generated projects in ``DLH_SMOKE_NODES_DIR`` / ``DLH_SMOKE_SLOW_DIR`` and the
connections; without them (the other smoke test shares this folder) the file defines no DAG.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from dlh_airflow_common.rendering import DbtProject, dbt_dag

NODES = os.environ.get("DLH_SMOKE_NODES_DIR")
SLOW = os.environ.get("DLH_SMOKE_SLOW_DIR")
COMMON: dict[str, Any] = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False,
                          "tags": ["dbt-smoke"]}

if NODES:
    # seed -> stg_b, and stg_events: two roots that could run at once, but the default runs one at a time
    serial_dag = dbt_dag("smoke_nodes_duck", DbtProject(project_dir=NODES, conn_id="smoke_nodes_duck",
                                                         select=["+stg_b", "stg_events"]), **COMMON)
    # seed -> stg_a, stg_b -> mart_2, boom, flaky (three at once), relationships(mart_2, stg_a)
    parallel_dag = dbt_dag("smoke_nodes_duck_parallel",
                           DbtProject(project_dir=NODES, conn_id="smoke_nodes_duck_parallel",
                                      select=["stg_a", "+mart_2", "+boom", "+flaky"],
                                      # dbt's eager selection also picks this test through stg_a, but its
                                      # other parent, mart_1, is not built here, so it could only fail.
                                      exclude=["relationships_mart_1_id__id__ref_stg_a_"]),
                           max_active_tasks=4, **COMMON)
    for dag_id, boom in (("smoke_assets_boom", True), ("smoke_assets_ok", False)):
        globals()[dag_id] = dbt_dag(dag_id, DbtProject(project_dir=NODES, conn_id="smoke_assets_duck",
                                                       select=["+boom"], vars={"boom": boom}), **COMMON)
    consumed = DbtProject(project_dir=NODES, conn_id="smoke_assets_duck", select=["+boom"]).asset("boom")
    with DAG("smoke_assets_consumer", **{**COMMON, "schedule": [consumed]}):
        EmptyOperator(task_id="consume")
if SLOW:
    streamed_pg_dag = dbt_dag("smoke_streamed_pg", DbtProject(
        project_dir=SLOW, conn_id="smoke_stream_pg", execution="streamed",
        # The producer defers at once: the kill tests kill it while its trigger watches.
        operator_args={"cancel_grace": 10, "check_interval": 1, "defer_after": 0}), **COMMON)
