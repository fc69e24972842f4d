"""The teardown that emits the asset events of tables built by dbt tasks that then failed.

Airflow registers a task's asset events only when it succeeds, yet a ``dbt build`` that fails on one
model has rebuilt the others: a consumer of those tables should hear of them. A failing building task
keeps its built nodes in an XCom (``assets.keep_for_teardown``) when this task follows it; this task,
a teardown after the building tasks, emits them through each task's alias, and a teardown never
decides the DAG run's state. It records what it emitted, so a later try of a cleared task does not
announce those tables again. See docs/assets.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dlh_airflow_common._compat import AirflowSkipException
from dlh_airflow_common.assets import BUILT_KEY, table_asset, task_alias

if TYPE_CHECKING:
    from airflow.sdk import Context

FAILED_BUILDS_TASK_ID = "dbt_assets_of_failed_builds"
EMITTED_KEY = "dlh_dbt_emitted_assets"  # [task id, unique id, invocation id] per event this task emitted


class DbtFailedBuildAssetsOperator(BaseOperator):
    """Emits what the failed tries of ``dbt_task_ids`` built; skipped when none did.

    Add it as a teardown after your own building ``DbtOperator`` tasks, in their DAG:
    ``[build_a, build_b] >> DbtFailedBuildAssetsOperator(task_id=..., dbt_task_ids=[...]).as_teardown()``
    (``dbt_dag`` adds it to the ``single`` and ``layers`` shapes and the streamed mode).
    """

    ui_color = "#eaf2f8"

    def __init__(self, *, dbt_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.has_dag():
            raise ValueError(f"{self.task_id}: create DbtFailedBuildAssetsOperator inside its DAG (with "
                             "DAG(...) or dag=...): it emits through the dbt tasks' aliases (named after it)")
        self.dbt_task_ids = list(dbt_task_ids)
        self.aliases = {t: task_alias(self.dag.dag_id, t) for t in self.dbt_task_ids}
        self.outlets = [*self.outlets, *self.aliases.values()]

    def execute(self, context: Context) -> int:
        ti, events = context["ti"], context["outlet_events"]
        emitted: list[list[str]] = []
        for task_id, alias in self.aliases.items():
            kept = list(_rows(ti.xcom_pull(task_ids=task_id, key=BUILT_KEY)))
            for row in kept:
                extra = dict(row["extra"])
                events[alias].add(table_asset(str(row["uri"])), extra=extra)
                emitted.append([task_id, str(extra.get("dbt_unique_id")),
                                str(extra.get("dbt_invocation_id"))])
            if kept:
                self.log.info("%s failed after building %d node(s): their asset events go out through "
                              "alias %s", task_id, len(kept), alias.name)
        if not emitted:
            raise AirflowSkipException("No dbt task of this run failed after building a table")
        ti.xcom_push(key=EMITTED_KEY, value=emitted)
        return len(emitted)


def _rows(pulled: Any) -> Iterable[dict[str, Any]]:
    """The kept rows of an unmapped task (a list of rows) or a mapped one (a list per map index)."""
    for item in pulled or ():
        if isinstance(item, dict):
            yield item
        elif isinstance(item, list):
            yield from _rows(item)


def emitted_by_teardown(task: BaseOperator, context: Context) -> set[tuple[str, str]]:
    """(unique id, invocation id) of ``task``'s nodes its DAG's teardown already emitted in this run: an
    earlier, failed try's, before the task was cleared."""
    done: set[tuple[str, str]] = set()
    for down in task.downstream_list:
        if isinstance(down, DbtFailedBuildAssetsOperator):
            for row in context["ti"].xcom_pull(task_ids=down.task_id, key=EMITTED_KEY) or ():
                if isinstance(row, list) and len(row) == 3 and row[0] == task.task_id:
                    done.add((row[1], row[2]))
    return done


def has_teardown(task: BaseOperator) -> bool:
    return any(isinstance(down, DbtFailedBuildAssetsOperator) for down in task.downstream_list)


__all__ = ["EMITTED_KEY", "FAILED_BUILDS_TASK_ID", "DbtFailedBuildAssetsOperator", "emitted_by_teardown",
           "has_teardown"]
