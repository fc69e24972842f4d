"""Turn a :class:`DbtGraph` into Airflow tasks: ids, docs, commands and edges.

Edges are added to each task's ``upstream_task_ids`` / ``downstream_task_ids`` directly, which is
what ``a >> b`` does after checking that both tasks share one DAG; that check hashes the whole DAG
on every edge (O(tasks x edges)), which makes ``>>`` the slowest part of rendering a large project.
``tests/test_rendering.py`` checks that the wiring survives serialization, so an Airflow upgrade that
changes these internals fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk import BaseOperator

from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.rendering.graph import DbtGraph, GraphNode, Layer

# Node (and layer) tasks build exactly their nodes, with the tests dbt's `buildable` rule attaches to
# them: those whose other parents are all upstream (see graph.py, which mirrors the rule).
NODE_ARGS = ["--indirect-selection", "buildable"]
_BUILD_ARGS = " " + " ".join(NODE_ARGS)
COMMANDS = {"model": "build", "seed": "build", "snapshot": "build", "test": "test",
             "source": "source freshness"}

NodeTaskFactory = Callable[[GraphNode, str, str, Mapping[str, Any]], BaseOperator]


def isolated_node_task(node: GraphNode, task_id: str, doc: str, args: Mapping[str, Any]) -> BaseOperator:
    """One dbt process per task (``dbt build --select <node>``), reusing the warm partial parse."""
    command = COMMANDS[node.resource_type]
    extra = NODE_ARGS if command == "build" else []
    return DbtOperator(task_id=task_id, command=command, select=[node.selector], extra_args=extra,
                       doc_md=doc, dbt_unique_id=node.unique_id, **args)


PRODUCER_TASK_ID = "dbt_producer"


def streamed_node_task(node: GraphNode, task_id: str, doc: str, args: Mapping[str, Any]) -> BaseOperator:
    """A watcher of the producer's stream, born and ended in the triggerer; builds its node on retry.

    ``trigger_rule="always"``: it starts watching when the run starts, and dbt's result, not the
    upstream tasks' states, decides its outcome (edges stay for the graph view).
    """
    command = COMMANDS[node.resource_type]
    extra = NODE_ARGS if command == "build" else []
    return DbtOperator(task_id=task_id, command=command, select=[node.selector], extra_args=extra,
                       doc_md=doc, dbt_unique_id=node.unique_id, node_tests=node.tests,
                       **{"stream_from": PRODUCER_TASK_ID, **args, "trigger_rule": "always"})


# Execution modes for the `nodes` shape.
NODE_EXECUTIONS: dict[str, NodeTaskFactory] = {"isolated": isolated_node_task, "streamed": streamed_node_task}


def task_ids(graph: DbtGraph) -> dict[str, str]:
    """Each node's task id (set when the graph was built: ``graph.assign_task_ids``)."""
    return {uid: node.task_id for uid, node in graph.nodes.items()}


def node_doc(node: GraphNode, command: str, extra: str = "") -> str:
    """What the Airflow UI shows for the task: which dbt node, where, how it runs."""
    args = _BUILD_ARGS if command == "build" else ""
    tests = ("\n- tests run in this task: " + ", ".join(f"`{t.split('.')[2]}`" for t in node.tests)
             if node.tests else "")
    return (f"**dbt {node.resource_type}** `{node.unique_id}`\n\n- path: `{node.path}`\n"
            f"- materialization: `{node.materialization}`\n- runs: `dbt {command} --select {node.selector}"
            f"{args}`{tests}" + (f"\n\n{extra}" if extra else ""))


def layer_doc(layer: Layer, graph: DbtGraph, extra: str = "") -> str:
    tests = ", ".join(f"`{graph.nodes[t].name}`" for t in layer.tests) or "none"
    lines = [f"**dbt layer** `{layer.name}`: `{layer.selector}`", "",
             f"- {len(layer.members)} node(s), built with `dbt build` (tests whose other parents are "
             "upstream run with their last parent)",
             f"- tests across layers run here (their last parent is in this layer): {tests}"]
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def wire(edges: list[tuple[BaseOperator, BaseOperator]]) -> None:
    """``up >> down`` for every pair, without hashing the DAG once per edge (see module doc)."""
    for up, down in edges:
        if up.dag is not down.dag:
            raise ValueError(f"{up.task_id} and {down.task_id} are not in one DAG")
        up.downstream_task_ids.add(down.node_id)
        down.upstream_task_ids.add(up.node_id)
