"""The mapped per-node layout: one mapped task whose map indexes are the dbt nodes.

Airflow 3.3.2's triggerer deserializes the whole DAG for every trigger of a task started there, so a
task per node costs N x O(N). One mapped task expanded over the nodes' unique ids keeps the DAG small
(about a tenth), whatever the node count; each map index is still its own task instance, born and
ended in the triggerer.

Airflow starts a mapped task in the triggerer only when the operator CLASS says so
(``start_from_trigger``, ``start_trigger_args``), with the same trigger arguments for every map index:
so each rendered project gets a small subclass holding its arguments (cached per distinct arguments;
always named ``DbtMappedNodeOperator``), and the trigger finds its node from its map index in the index
the producer writes at launch (``DbtOperator.node_index``). A map index that runs on a worker (a
retry, a clear, ``dag.test()``, Airflow < 3.3) knows its unique id from the expand value and looks up
its selector and tests in the graph the DAG file's parse loaded (:func:`register`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dlh_airflow_common._compat import airflow_at_least
from dlh_airflow_common.core.exceptions import DbtProjectException
from dlh_airflow_common.naming import EXPAND_ARG, MAPPED_OPERATOR, node_label
from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.operators.streamed import START_FROM_TRIGGER_SINCE, TRIGGER, run_trigger_kwargs
from dlh_airflow_common.rendering.graph import GraphNode
from dlh_airflow_common.rendering.tasks import COMMANDS, NODE_ARGS

if TYPE_CHECKING:
    from airflow.sdk import Context

MAPPED_TASK_ID = "dbt_nodes"
# "auto" renders the mapped layout above this many node tasks. A task per node ran in 0.8-1.1x a bare
# `dbt build` at 100 models and 3.5-3.8x at 500 (the triggerer's N x O(N)); mapped: 0.9x at 100, 1.27x at
# 500 (bench/per_node.py; docs/streamed.md). At 200 both layouts ran about as long.
AUTO_MAPPED_ABOVE = 200
NODE_LAYOUTS = ("auto", "tasks", "mapped")

# (dag id, task id) of a rendered mapped node task -> its graph's nodes, filled by each parse of the
# DAG file in this process: the worker's unmapped task reads its node's selector and tests here.
_NODES: dict[tuple[str, str], Mapping[str, GraphNode]] = {}
_CLASSES: dict[str, type[DbtMappedNodeOperator]] = {}


class DbtMappedNodeOperator(DbtOperator):
    """One map index: a dbt node of the producer's run (the base of the per-project subclasses)."""

    def execute(self, context: Context) -> dict[str, Any]:
        self._bind_node()
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        self._bind_node()
        return super().execute_complete(context, event)

    @property
    def node_label(self) -> str:
        """The map index's name in the UI (``map_index_template``, rendered on a worker)."""
        return node_label(str(self.dbt_unique_id or ""))

    def _bind_node(self) -> None:
        """This map index's command, selector and tests, from the graph the DAG file's parse loaded."""
        uid = str(self.dbt_unique_id)
        node = _NODES.get((self.dag_id, self.task_id), {}).get(uid)
        if node is None:
            raise DbtProjectException(
                f"{self.task_id}: no dbt node {uid} in the graph this worker rendered for DAG {self.dag_id}: "
                "the project changed since the DAG run was created. Clear the DAG run to run the new graph")
        command = COMMANDS[node.resource_type]
        self.command, self.select, self.node_tests = command, [node.selector], list(node.tests)
        self.extra_args = list(NODE_ARGS) if command == "build" else []


def node_class(trigger_kwargs: Mapping[str, Any]) -> type[DbtMappedNodeOperator]:
    """The subclass holding these trigger arguments as Airflow needs them (class attributes), cached.

    On Airflow < 3.3 there is no start from the triggerer: the base class, whose ``execute`` watches
    from a worker and defers to the same trigger.
    """
    if not airflow_at_least(START_FROM_TRIGGER_SINCE):
        return DbtMappedNodeOperator
    key = json.dumps(trigger_kwargs, sort_keys=True)
    cls = _CLASSES.get(key)
    if cls is None:
        from airflow.triggers.base import StartTriggerArgs

        args = StartTriggerArgs(trigger_cls=TRIGGER, trigger_kwargs={**trigger_kwargs, "end_task": True},
                                next_method="execute_complete", next_kwargs=None, timeout=None)
        cls = _CLASSES[key] = type(MAPPED_OPERATOR, (DbtMappedNodeOperator,), {
            "__module__": __name__, "__qualname__": MAPPED_OPERATOR, "start_from_trigger": True,
            "start_trigger_args": args})
    return cls


def mapped_node_task(nodes: list[GraphNode], producer: DbtOperator, doc: str, args: Mapping[str, Any]) -> Any:
    """The mapped node task after ``producer``, expanded over ``nodes``' unique ids (in this order)."""
    kwargs = run_trigger_kwargs(producer, producer.task_id)  # the producer has the node tasks' settings
    partial = {k: v for k, v in args.items() if k != "trigger_rule"}
    task = node_class(kwargs).partial(
        task_id=MAPPED_TASK_ID, command="build", stream_from=producer.task_id, doc_md=doc,
        trigger_rule="always", map_index_template="{{ task.node_label }}", **partial,
    ).expand(**{EXPAND_ARG: [n.unique_id for n in nodes]})
    producer.node_index = [(n.unique_id, list(n.tests)) for n in nodes]
    return task


def register(dag_id: str, task_id: str, nodes: Mapping[str, GraphNode]) -> None:
    """Keep the graph of a rendered mapped node task for its map indexes that run on this worker."""
    _NODES[(dag_id, task_id)] = nodes


__all__ = ["AUTO_MAPPED_ABOVE", "MAPPED_TASK_ID", "NODE_LAYOUTS", "DbtMappedNodeOperator", "mapped_node_task",
           "node_class", "register"]
