"""DAGs whose asset events tests/test_assets.py checks: every shape, a failing model, a plain operator.

The generated project of tests/render_project.py on the render_duck connection (tests/conftest.py);
``boom`` fails with vars {"boom": True} and ``boom_child`` is then skipped. assets_pg's connection is
set by its test.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.rendering import DbtProject, dbt_dag

PROJECT = os.environ.get("DLH_RENDER_PROJECT_DIR", "/nonexistent")
WHEN: dict[str, Any] = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}
BOOM = {"boom": True}
LAYERS = {"seeds": "resource_type:seed", "staging": "path:models/staging",
          "marts": "path:models/intermediate path:models/marts"}

# Excluding mart_2 drops its relationships test to stg_a (dbt's eager rule would run it without mart_2).
MART_1 = {"select": ["+mart_1"], "exclude": ["mart_2"]}
FLAKY_CSV = str(Path(PROJECT).parent / "assets_flaky.csv")  # flaky fails until it exists


def _make_flaky_pass(context: Any) -> None:
    """on_retry_callback: the cause of the failure goes away before the retry."""
    Path(FLAKY_CSV).write_text("x\n1\n")


def project(**kw: Any) -> DbtProject:
    return DbtProject(project_dir=PROJECT, conn_id="render_duck", **kw)


nodes_boom = dbt_dag("assets_nodes_boom", project(vars=BOOM), **WHEN)
single = dbt_dag("assets_single", project(shape="single", **MART_1), **WHEN)
single_ok = dbt_dag("assets_single_ok", project(shape="single", select=["+boom_child"]), **WHEN)
single_boom = dbt_dag("assets_single_boom", project(shape="single", select=["+boom_child"], vars=BOOM), **WHEN)
streamed = dbt_dag("assets_streamed", project(execution="streamed", **MART_1), **WHEN)
streamed_boom = dbt_dag("assets_streamed_boom", project(execution="streamed", select=["+boom_child"], vars=BOOM),
                        **WHEN)
single_flaky = dbt_dag("assets_single_flaky", project(
    shape="single", select=["+flaky"], vars={"flaky": True}, env_vars={"DLH_FLAKY_CSV": FLAKY_CSV},
    operator_args={"retries": 1, "retry_delay": timedelta(0), "on_retry_callback": _make_flaky_pass}), **WHEN)
layers_boom = dbt_dag("assets_layers_boom", project(shape="layers", layers=LAYERS, vars=BOOM), **WHEN)

_COMMON: dict[str, Any] = {"dbt_project_dir": PROJECT, "conn_id": "render_duck", "select": ["raw_events"],
                           "deferrable": False}
with DAG("assets_operator", **WHEN) as operator_dag:
    on = DbtOperator(task_id="seed_on", command="seed", **_COMMON)
    off = DbtOperator(task_id="seed_off", command="seed", emit_assets=False, **_COMMON)
    listing = DbtOperator(task_id="ls", command="ls", **_COMMON)
    # detached, ends within defer_after: reported from its control dir without deferring
    detached = DbtOperator(task_id="seed_detached", command="seed", **{**_COMMON, "deferrable": True})
    on >> off >> listing >> detached

with DAG("assets_pg", **WHEN) as pg_dag:
    DbtOperator(task_id="build", command="build", dbt_project_dir=PROJECT, conn_id="assets_pg",
                select=["+mart_1"], extra_args=["--indirect-selection", "buildable"], deferrable=False)
