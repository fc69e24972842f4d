"""Streamed per-node DAGs whose node results go through the state store (the suite's S3, tests/s3server.py).

tests/test_state_store.py runs them with dag.test(); the connection dlh_s3 and the bucket come from
its ``s3`` fixture. Parsing them touches no store (the URL is only passed on to the node triggers).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}
STORE = "s3://dlh-state/suite"


def through_store(**operator_args: object) -> DbtProject:
    return DbtProject(project_dir=PROJECT, conn_id="render_duck", execution="streamed", vars={"boom": True},
                      state_store=STORE, state_store_conn_id="dlh_s3",
                      operator_args={"keep_target_artifacts": True, **operator_args})


# The producer detached (deferrable) on this one host; node tasks read only the store.
detached_dag = dbt_dag("store_streamed_boom", through_store(), **WHEN)
# The producer as a plain sync task (as on KubernetesExecutor), writing node results as dbt goes.
sync_dag = dbt_dag("store_streamed_boom_sync", through_store(sync_producer=True), **WHEN)
# The mapped layout: the producer's node index goes to the store too (tests/test_mapped.py's store test).
mapped_dag = dbt_dag("store_mapped_boom", DbtProject(
    project_dir=PROJECT, conn_id="render_duck", execution="streamed", node_layout="mapped", vars={"boom": True},
    state_store=STORE, state_store_conn_id="dlh_s3"), **WHEN)
