"""Names for the node instances of the mapped per-node layout, and where a mapped node is found.

In ``airflow_local_settings.py`` (on the scheduler's host; the only place Airflow applies it)::

    from dlh_airflow_common.naming import task_instance_mutation_hook

The scheduler then names each map index of a mapped node task after its dbt node (``model.orders``
instead of ``3``) as it creates the instance. Airflow renders ``map_index_template`` only on a worker,
and these instances never reach one when they are born and ended in the triggerer. Every other task
instance is left alone. This module imports nothing from Airflow at import time: Airflow imports it
while it loads its own settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The keyword the mapped node task is expanded over, and the class name of its operator
# (``rendering.mapped``): how the hook recognises our tasks in the scheduler's serialized DAG.
EXPAND_ARG = "dbt_unique_id"
MAPPED_OPERATOR = "DbtMappedNodeOperator"
MAPPED_MODULE = "dlh_airflow_common.rendering.mapped"


def mapped_node(task_instance: Any) -> tuple[int, str | None]:
    """A mapped node instance's map index, and its dbt unique id when this process has its task.

    The one place that reads Airflow's internals for this: ``map_index`` of a task instance (the
    scheduler's, or a trigger's runtime one), and the literal list the task was expanded over
    (``task.expand_input.value[EXPAND_ARG]``: present in the scheduler, absent in a trigger that let
    go of its task). ``(-1, None)`` for anything else. ``tests/test_mapped.py`` pins both readings.
    """
    index = getattr(task_instance, "map_index", None)
    if not isinstance(index, int) or index < 0:
        return -1, None
    task = getattr(task_instance, "task", None)
    value = getattr(getattr(task, "expand_input", None), "value", None)
    ids = value.get(EXPAND_ARG) if isinstance(value, Mapping) else None
    if isinstance(ids, Sequence) and not isinstance(ids, str) and index < len(ids):
        return index, str(ids[index])
    return index, None


def is_mapped_node_task(task: Any) -> bool:
    """Whether ``task`` (a scheduler-side serialized task, or an SDK one) is our mapped node task."""
    return (getattr(task, "task_type", None) == MAPPED_OPERATOR
            and getattr(task, "_task_module", None) == MAPPED_MODULE)


def node_label(unique_id: str) -> str:
    """What the UI shows for a node: ``model.orders`` for ``model.shop.orders`` (the task id the
    one-task-per-node layout gives it, without the package); a test keeps its name, not its hash."""
    parts = unique_id.split(".")
    if len(parts) < 3:
        return unique_id
    kind, rest = parts[0], parts[2:]
    if kind == "test" and len(rest) > 1:
        rest = rest[:-1]  # dbt's hash of a generic test's arguments
    return ".".join([kind, *rest])


def task_instance_mutation_hook(task_instance: Any, dag_run: Any) -> None:
    """Airflow's policy: names a mapped node instance after its node; leaves every other one alone.

    Runs in the scheduler as it creates task instances; reads only the serialized task it already
    has, opens no session, and never raises (a naming problem must not stop scheduling).
    """
    try:
        if not is_mapped_node_task(getattr(task_instance, "task", None)):
            return
        _, unique_id = mapped_node(task_instance)
        if unique_id is not None:
            # Airflow 3.3's model: a column behind a read-only ``rendered_map_index`` property.
            column = "_rendered_map_index" if hasattr(type(task_instance), "_rendered_map_index") \
                else "rendered_map_index"
            setattr(task_instance, column, node_label(unique_id))
    except Exception:  # a display name is never worth a failed scheduler loop
        return


def hook_installed() -> bool:
    """Whether this Airflow process applies :func:`task_instance_mutation_hook` (as a local setting)."""
    try:
        from airflow.settings import get_policy_plugin_manager
    except ImportError:  # a worker with the Task SDK alone: nothing here can tell
        return False
    try:
        impls = get_policy_plugin_manager().hook.task_instance_mutation_hook.get_hookimpls()
    except Exception:
        return False
    return any(impl.function is task_instance_mutation_hook for impl in impls)


__all__ = ["EXPAND_ARG", "MAPPED_OPERATOR", "hook_installed", "is_mapped_node_task", "mapped_node",
           "node_label", "task_instance_mutation_hook"]
