"""Airflow DAGs of the streamed per-node mode on the generated project (tests/render_project.py).

One producer `dbt build` streams node results; node tasks reflect them. tests/test_streamed.py runs
them with dag.test(); the connections render_duck and render_pg come from tests/conftest.py and the
test module.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
FLAKY_CSV = str(Path(PROJECT).parent / "flaky_streamed.csv")
WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}


def _make_flaky_pass(context: Any) -> None:
    """on_retry_callback: the cause of the failure goes away before the retry."""
    Path(FLAKY_CSV).write_text("x\n1\n")


def streamed(conn_id: str, **kw: Any) -> DbtProject:
    kw.setdefault("operator_args", {"keep_target_artifacts": True})
    return DbtProject(project_dir=PROJECT, conn_id=conn_id, execution="streamed", **kw)


duck_dag = dbt_dag("streamed_duck", streamed("render_duck"), **WHEN)
pg_dag = dbt_dag("streamed_pg", streamed("render_pg"), **WHEN)
boom_dag = dbt_dag("streamed_duck_boom", streamed("render_duck", vars={"boom": True}), **WHEN)
flaky_dag = dbt_dag("streamed_duck_flaky", streamed(
    "render_duck", vars={"flaky": True}, env_vars={"DLH_FLAKY_CSV": FLAKY_CSV},
    operator_args={"keep_target_artifacts": True, "retries": 1, "retry_delay": timedelta(0),
                   "on_retry_callback": _make_flaky_pass}), **WHEN)
# The node task's retry is under test, not the producer's: dag.test() runs a ready producer retry
# (highest priority weight) before node tasks due at the same moment, and that retry rebuilds the
# node in the same stream, so the node task would see its success on try 1 (seen in CI).
flaky_dag.task_dict["dbt_producer"].retries = 0
