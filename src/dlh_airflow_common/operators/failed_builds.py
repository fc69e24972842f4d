"""The teardown that emits the asset events of tables built by dbt tasks that then failed.

Airflow registers a task's asset events only when it succeeds, yet a ``dbt build`` that fails on one
model has rebuilt the others: a consumer of those tables should hear of them. A failing building task
keeps its built nodes in an XCom (``assets.keep_for_teardown``); this task, a teardown after the
building tasks, emits them through each task's alias. It runs when they are done, whatever their
state, and a teardown never decides the DAG run's state. See docs/assets.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dlh_airflow_common._compat import AirflowSkipException
from dlh_airflow_common.assets import BUILT_KEY, table_asset, task_alias

if TYPE_CHECKING:
    from airflow.sdk import Context

FAILED_BUILDS_TASK_ID = "dbt_assets_of_failed_builds"


class DbtFailedBuildAssetsOperator(BaseOperator):
    """Emits what the failed tries of ``dbt_task_ids`` built; skipped when none did.

    Add it as a teardown after your own building ``DbtOperator`` tasks:
    ``[build_a, build_b] >> DbtFailedBuildAssetsOperator(task_id=..., dbt_task_ids=[...]).as_teardown()``
    (``dbt_dag`` adds it to the ``single`` and ``layers`` shapes and the streamed mode).
    """

    ui_color = "#eaf2f8"

    def __init__(self, *, dbt_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dbt_task_ids = list(dbt_task_ids)
        dag_id = self.dag.dag_id if self.has_dag() else None
        self.outlets = [*self.outlets, *(task_alias(dag_id, t) for t in self.dbt_task_ids)]

    def execute(self, context: Context) -> int:
        ti, emitted = context["ti"], 0
        events = context["outlet_events"]
        for task_id in self.dbt_task_ids:
            kept = ti.xcom_pull(task_ids=task_id, key=BUILT_KEY)
            if not kept:
                continue
            alias = task_alias(self.dag_id, task_id)
            for row in kept:
                events[alias].add(table_asset(str(row["uri"])), extra=dict(row["extra"]))
            self.log.info("%s failed after building %d node(s): their asset events go out through alias %s",
                          task_id, len(kept), alias.name)
            emitted += len(kept)
        if not emitted:
            raise AirflowSkipException("No dbt task of this run failed after building a table")
        return emitted


__all__ = ["FAILED_BUILDS_TASK_ID", "DbtFailedBuildAssetsOperator"]
