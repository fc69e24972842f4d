"""Airflow DAGs rendered from a generated dbt project (tests/render_project.py) in every shape.

tests/test_rendering.py runs them with dag.test(); DLH_RENDER_PROJECT_DIR and the connection
render_duck are set by tests/conftest.py.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from dlh_airflow_common.rendering import DbtProject, dbt_dag, dbt_task_group

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
FLAKY_CSV = str(Path(PROJECT).parent / "flaky.csv")
WHEN = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}
LAYERS = {"seeds": "resource_type:seed", "staging": "path:models/staging",
          "intermediate": "path:models/intermediate", "marts": "path:models/marts"}


def _make_flaky_pass(context: Any) -> None:
    """on_retry_callback: the cause of the failure goes away before the retry."""
    Path(FLAKY_CSV).write_text("x\n1\n")


def project(**kw: Any) -> DbtProject:
    kw.setdefault("operator_args", {"keep_target_artifacts": True})
    return DbtProject(project_dir=PROJECT, conn_id="render_duck", **kw)


nodes_dag = dbt_dag("render_nodes", project(shape="nodes", source_freshness=True), **WHEN)
layers_dag = dbt_dag("render_layers", project(shape="layers", layers=LAYERS), **WHEN)
single_dag = dbt_dag("render_single", project(shape="single"), **WHEN)
boom_dag = dbt_dag("render_nodes_boom", project(vars={"boom": True}), **WHEN)
rel_fail_dag = dbt_dag("render_nodes_rel_fail", project(  # excluding mart_2 drops its tests (dbt's eager rule)
    vars={"rel_fail": True}, select=["+mart_1"], exclude=["mart_2"]), **WHEN)
flaky_dag = dbt_dag("render_nodes_flaky", project(
    vars={"flaky": True}, select=["+flaky"], env_vars={"DLH_FLAKY_CSV": FLAKY_CSV},
    operator_args={"keep_target_artifacts": True, "retries": 1, "retry_delay": timedelta(0),
                   "on_retry_callback": _make_flaky_pass}), **WHEN)

with DAG("render_group_in_dag", **WHEN) as group_dag:
    from airflow.providers.standard.operators.empty import EmptyOperator

    extract, publish = EmptyOperator(task_id="extract"), EmptyOperator(task_id="publish")
    extract >> dbt_task_group("dbt", project(shape="nodes", select=["stg_a+"])) >> publish
