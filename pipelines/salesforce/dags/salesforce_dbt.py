"""Airflow DAG `salesforce_dbt`: transform raw_salesforce with dbt, only when new raw data arrived.

Scheduled on the raw tables' assets: a run starts after `salesforce_extract` landed rows in any of
them. For a run triggered by hand (or one woken by rows an earlier run already built),
check_for_new_raw_data short-circuits the run when the raw watermark (newest SystemModstamp landed)
equals the one recorded at the last successful build. Otherwise dbt checks source freshness and
builds only what is downstream of sources with newer data (`source_status:fresher+` against the last
successful run's state), or everything when there is no state yet. The watermark and the state are
recorded only after a successful build, and then `dbt docs generate` publishes the project's docs site
(served in the Airflow UI under "dbt Docs"). dbt runs through DbtOperator in isolated runtimes, so the
project may be mounted read-only.

`SALESFORCE_DBT_SHAPE=nodes` renders the build as one task per dbt node instead of one task: after
freshness, `dbt ls` resolves the same run-time selection, and the nodes it did not choose skip.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, AssetAny, BaseHook, task
from salesforce_lib import state
from salesforce_lib.assets import raw_assets
from salesforce_lib.config import WAREHOUSE_CONN_ID
from salesforce_lib.store import store_for_connection

from dlh_airflow_common.core import project_dir_from_dag_file
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.rendering import DbtProject, dbt_task_group

PROJECT = str(project_dir_from_dag_file(__file__, "dbt", "salesforce"))
SHAPE = os.environ.get("SALESFORCE_DBT_SHAPE", "single")  # "single" (one dbt build) or "nodes"


def plan(key: str) -> str:
    """A value of this run's build plan, rendered (natively) when the dbt task starts."""
    return "{{ ti.xcom_pull(task_ids='plan_build')['" + key + "'] }}"



def _store() -> Any:
    return store_for_connection(BaseHook.get_connection(WAREHOUSE_CONN_ID))


with DAG(
    "salesforce_dbt",
    schedule=AssetAny(*raw_assets().values()),  # any of them (a list would wait for all)
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,  # the build's selection is a list chosen at run time
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["salesforce", "dbt"],
) as dag:

    @task.short_circuit
    def check_for_new_raw_data() -> bool:
        store = _store()
        raw, done = store.raw_watermark(), store.transformed_watermark()
        print(f"raw watermark {raw}; transformed up to {done}")
        return raw is not None and raw != done

    @task
    def plan_build(run_id: str | None = None) -> dict[str, object]:
        chosen = state.selection(str(run_id))
        # Read before dbt starts: data landing during the build is left for the next run.
        chosen["raw_watermark"] = _store().raw_watermark()
        print(f"dbt build plan: {chosen['mode']}; raw watermark {chosen['raw_watermark']}")
        return chosen

    freshness = DbtOperator(
        task_id="dbt_source_freshness", command="source freshness", dbt_project_dir=PROJECT,
        conn_id=WAREHOUSE_CONN_ID, target_path=plan("target_path"),
    )
    if SHAPE == "nodes":

        @task
        def select_nodes(ti: Any = None) -> list[str]:
            """The run's selection, resolved by dbt against this run's freshness results."""
            chosen = ti.xcom_pull(task_ids="plan_build")
            hook = DbtHook(PROJECT, conn_id=WAREHOUSE_CONN_ID, target_path=chosen["target_path"])
            nodes = hook.list_nodes(chosen["select"] or None, extra_args=chosen["extra_args"])
            print(f"{len(nodes)} dbt node(s) selected for this run")
            return nodes

        build: Any = dbt_task_group("dbt_build", DbtProject(
            project_dir=PROJECT, conn_id=WAREHOUSE_CONN_ID, shape="nodes",
            run_only="{{ ti.xcom_pull(task_ids='select_nodes') }}"))
        freshness >> select_nodes() >> build
    else:
        build = DbtOperator(
            task_id="dbt_build", command="build", dbt_project_dir=PROJECT, conn_id=WAREHOUSE_CONN_ID,
            target_path=plan("target_path"), select=plan("select"), extra_args=plan("extra_args"),
        )
        freshness >> build

    @task(trigger_rule="none_failed")  # node tasks the run did not choose are skipped, not failed
    def record_success(ti: Any = None, run_id: str | None = None) -> str:
        chosen = ti.xcom_pull(task_ids="plan_build")
        state.promote(str(run_id))
        if chosen["raw_watermark"]:
            _store().record_transformed(chosen["raw_watermark"])
        return str(chosen["raw_watermark"])

    # After the state is recorded, so a docs failure never blocks the next build: a target of its own
    # (not the build's state dir); on success the site is published for the API server's "dbt Docs".
    docs = DbtOperator(task_id="dbt_docs_generate", command="docs generate", dbt_project_dir=PROJECT,
                       conn_id=WAREHOUSE_CONN_ID)

    check_for_new_raw_data() >> plan_build() >> freshness
    build >> record_success() >> docs
