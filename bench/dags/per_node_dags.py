"""DAGs for bench/per_node.py, described by the JSON file in ``DLH_BENCH_SPEC`` (none without it).

Each entry: dag_id, project_dir, conn_id, shape, execution, node_layout, manifest_path. The manifest
comes from the bench's bare ``dbt build`` of the same project, so parsing this file starts no dbt process.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from dlh_airflow_common.rendering import DbtProject, dbt_dag

SPEC = os.environ.get("DLH_BENCH_SPEC")


def _noop() -> None:
    """A floor task: what Airflow alone costs per task (worker, task process, API calls)."""


def _floor(dag_id: str, rendered: DAG) -> DAG:
    """The rendered DAG's graph with a no-op Python task per node task: Airflow's own cost of the shape."""
    from airflow.providers.standard.operators.python import PythonOperator

    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             is_paused_upon_creation=False) as dag:
        tasks = {tid: PythonOperator(task_id=tid, python_callable=_noop) for tid in rendered.task_dict}
    for tid, task in rendered.task_dict.items():
        for up in task.upstream_task_ids:
            tasks[up] >> tasks[tid]
    return dag


def _dag(entry: dict[str, Any], **kwargs: Any) -> DAG:
    if entry.get("execution") == "floor":
        source = {**entry, "dag_id": entry["dag_id"] + "_src", "execution": "isolated"}
        return _floor(entry["dag_id"], _dag(source, auto_register=False))
    project = DbtProject(project_dir=entry["project_dir"], conn_id=entry["conn_id"], shape=entry["shape"],
                         execution=entry.get("execution", "isolated"),
                         node_layout=entry.get("node_layout", "auto"),
                         manifest_path=entry.get("manifest_path"),
                         operator_args=entry.get("operator_args", {}))
    return dbt_dag(entry["dag_id"], project, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
                   is_paused_upon_creation=False, **kwargs)


if SPEC:
    for _entry in json.loads(Path(SPEC).read_text()):
        globals()[_entry["dag_id"]] = _dag(_entry)
