"""DAG for tests/test_docs_plugin.py: build the demo project, one per-node task, then `docs generate`."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.rendering.graph import GraphNode
from dlh_airflow_common.rendering.tasks import isolated_node_task

PROJECT = os.environ.get("DLH_DOCS_PROJECT_DIR", "/nonexistent")
ARGS = {"dbt_project_dir": PROJECT, "conn_id": "docs_duck"}

with DAG("dbt_docs", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    deps = DbtOperator(task_id="dbt_deps", command="deps", **ARGS)
    build = DbtOperator(task_id="dbt_build", command="build", **ARGS)
    # A task of the renderer's per-node shape, made by the renderer's own factory.
    node = GraphNode("model.demo.customer_orders", "model", "customer_orders", "demo",
                     "fqn:demo.marts.customer_orders")
    node_task = isolated_node_task(node, "model.customer_orders", "one node", ARGS)
    docs = DbtOperator(task_id="dbt_docs_generate", command="docs generate", **ARGS)
    deps >> build >> node_task >> docs
