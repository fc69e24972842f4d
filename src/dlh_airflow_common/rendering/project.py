"""A dbt project as Airflow tasks, in one of three shapes; as a DAG or as a task group in a bigger DAG.

    project = DbtProject(project_dir=..., conn_id="warehouse", shape="nodes", select=["tag:daily"],
                         operator_args={"retries": 2})
    dag = dbt_dag("daily_dbt", project, schedule="@daily", start_date=...)
    # or, inside an existing DAG:  extract >> dbt_task_group("dbt", project) >> publish

Shapes: ``single`` (deps + one ``dbt build``), ``layers`` (one ``dbt build`` per named selector,
ordered by the manifest's edges), ``nodes`` (one task per model/seed/snapshot; see ``graph``).
``single``, ``layers`` and the streamed mode end with a teardown emitting the assets a failed build
built (``operators.failed_builds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import DAG, Asset, AssetAlias, BaseOperator, TaskGroup, TriggerRule

from dlh_airflow_common.assets import hook_namespace
from dlh_airflow_common.core.assets import AssetNamespace
from dlh_airflow_common.core.runtime import validate_project_dir
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.operators.failed_builds import FAILED_BUILDS_TASK_ID, DbtFailedBuildAssetsOperator
from dlh_airflow_common.operators.settings import default_deferrable
from dlh_airflow_common.rendering.assets import NodeAssets, model_asset, source_asset
from dlh_airflow_common.rendering.graph import GraphNode, build_layers
from dlh_airflow_common.rendering.loader import GraphSource, LoadedGraph, gc_paused, load_graph
from dlh_airflow_common.rendering.mapped import (
    AUTO_MAPPED_ABOVE,
    NODE_LAYOUTS,
    mapped_node_task,
    register,
)
from dlh_airflow_common.rendering.tasks import (
    NODE_ARGS,
    NODE_EXECUTIONS,
    PRODUCER_TASK_ID,
    layer_doc,
    node_doc,
    task_ids,
    wire,
)

PROJECT_ARGUMENT = "DbtProject(project_dir=...)"
Shape = Literal["single", "layers", "nodes"]
SHAPES = ("single", "layers", "nodes")
_DUCKDB_NOTE = ("DuckDB allows one writing process per database file, so this DAG runs one dbt task at a "
                "time by default (max_active_tasks=1). With more, tasks on one DuckDB file still never fail "
                "on its lock: each waits for the file, holding its worker slot, and logs for whom.")
# DbtOperator arguments the project sets itself; operator_args must not repeat them.
_OWN_ARGS = {"command", "dbt_command", "select", "dbt_models", "exclude", "selector", "dbt_project_dir",
             "conn_id", "profiles_dir", "target", "profile_name", "vars", "runtime_root", "venv_path",
             "dbt_executable", "env_vars", "task_id", "extra_args", "only_nodes", "dbt_unique_id",
             "allow_empty_selection", "state_store", "state_store_conn_id"}


@dataclass(frozen=True)
class DbtProject:
    """Everything that renders a dbt project, given once for every shape and both forms."""

    project_dir: str
    conn_id: str | None = None
    profiles_dir: str | None = None
    target: str | None = None
    profile_name: str | None = None
    shape: Shape = "nodes"
    select: Sequence[str] = ()
    exclude: Sequence[str] = ()
    selector: str | None = None
    allow_empty_selection: bool = False  # else a selection that matches nothing fails (render or run)
    vars: Mapping[str, Any] | None = None
    layers: Mapping[str, str] = field(default_factory=dict)  # shape="layers": name -> dbt selector
    manifest_path: str | None = None  # a manifest built in CI (recommended); else `dbt ls` at render
    source_freshness: bool = False  # nodes/layers: a freshness task before the readers of each source
    execution: str = "isolated"  # nodes: how node tasks run
    # nodes, streamed: a task per node ("tasks"), one mapped task over the nodes ("mapped"), or mapped
    # above AUTO_MAPPED_ABOVE node tasks ("auto"); see docs/streamed.md
    node_layout: str = "auto"
    # nodes: the unique ids a run builds, chosen at run time (a template, e.g. an XCom of `dbt ls`):
    # the other node tasks skip, and a skipped upstream does not skip its downstream.
    run_only: str | None = None
    runtime_root: str | None = None
    # Streamed: node results go through this object store (s3://bucket/prefix) instead of the runtime root.
    state_store: str | None = None
    state_store_conn_id: str | None = None
    venv_path: str | None = None
    dbt_executable: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    operator_args: Mapping[str, Any] = field(default_factory=dict)  # any other DbtOperator argument

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r} is not one of {', '.join(SHAPES)}")
        if isinstance(self.select, str) or isinstance(self.exclude, str):
            object.__setattr__(self, "select", [self.select] if isinstance(self.select, str) else self.select)
            object.__setattr__(self, "exclude",
                               [self.exclude] if isinstance(self.exclude, str) else self.exclude)
        if self.shape == "layers" and not self.layers:
            raise ValueError('shape="layers" needs layers={"staging": "path:models/staging", ...}')
        if self.execution not in NODE_EXECUTIONS:
            raise ValueError(f"execution={self.execution!r} is not one of {', '.join(NODE_EXECUTIONS)}")
        if self.node_layout not in NODE_LAYOUTS:
            raise ValueError(f"node_layout={self.node_layout!r} is not one of {', '.join(NODE_LAYOUTS)}")
        if self.node_layout == "mapped" and (self.shape, self.execution) != ("nodes", "streamed"):
            raise ValueError('node_layout="mapped" needs shape="nodes", execution="streamed" (its node tasks '
                             f'start in the triggerer); this project has shape={self.shape!r}, '
                             f'execution={self.execution!r}')
        clash = sorted(_OWN_ARGS & set(self.operator_args))
        if clash:
            raise ValueError(f"operator_args repeats {', '.join(clash)}: set them on DbtProject itself")
        if not self.conn_id and not self.profiles_dir:
            raise ValueError("DbtProject needs conn_id (an Airflow connection) or profiles_dir")

    def checked_dir(self) -> Path:
        """The project dir, or the error every shape raises for a missing one (at render, not at run)."""
        return validate_project_dir(self.project_dir, PROJECT_ARGUMENT)

    def source(self) -> GraphSource:
        self.checked_dir()
        return GraphSource(
            project_dir=self.project_dir, conn_id=self.conn_id, profiles_dir=self.profiles_dir,
            target=self.target, profile_name=self.profile_name, select=tuple(self.select),
            exclude=tuple(self.exclude), selector=self.selector, vars=self.vars,
            manifest_path=self.manifest_path, runtime_root=self.runtime_root,
            source_freshness=self.source_freshness,
            layers=dict(self.layers) if self.shape == "layers" else {},
            venv_path=self.venv_path, dbt_executable=self.dbt_executable, env_vars=dict(self.env_vars),
            allow_empty_selection=self.allow_empty_selection)

    def common_args(self) -> dict[str, Any]:
        """The DbtOperator arguments every task of the project gets."""
        chosen: dict[str, Any] = {} if self.run_only is None else {
            "only_nodes": self.run_only, "trigger_rule": "none_failed"}
        own = {"dbt_project_dir": self.project_dir, "conn_id": self.conn_id,
               "profiles_dir": self.profiles_dir, "target": self.target, "profile_name": self.profile_name,
               "vars": dict(self.vars) if self.vars else None, "runtime_root": self.runtime_root,
               "venv_path": self.venv_path, "dbt_executable": self.dbt_executable,
               "env_vars": dict(self.env_vars) or None,
               "allow_empty_selection": self.allow_empty_selection or None, "state_store": self.state_store,
               "state_store_conn_id": self.state_store_conn_id}
        # Unset ones are left to the operator's defaults: each task keeps its init arguments.
        return {**chosen, **{k: v for k, v in own.items() if v is not None}, **self.operator_args}

    def mapped(self, node_tasks: int) -> bool:
        """Whether the streamed nodes render as one mapped task (``node_layout``, resolved)."""
        if (self.shape, self.execution) != ("nodes", "streamed"):
            return False
        return self.node_layout == "mapped" or (self.node_layout == "auto" and node_tasks > AUTO_MAPPED_ABOVE)

    def has_packages(self) -> bool:
        return any((Path(self.project_dir) / n).is_file() for n in ("packages.yml", "dependencies.yml"))

    def asset_namespace(self) -> AssetNamespace:
        """Where the project's tables live, as asset URIs name them (looks the connection up once)."""
        hook = DbtHook(self.checked_dir(), conn_id=self.conn_id, profiles_dir=self.profiles_dir,
                       target=self.target, profile_name=self.profile_name, env_vars=dict(self.env_vars))
        hook.project_argument = PROJECT_ARGUMENT
        return hook_namespace(hook)

    def asset(self, name: str) -> Asset:
        """The Airflow asset of a model, seed or snapshot (its name or unique id), for ``schedule=[...]``.

        The same URI the project's tasks emit events for; see docs/assets.md.
        """
        return model_asset(self, load_graph(self.source()).graph, name)

    def source_asset(self, source: str, table: str) -> Asset:
        """The Airflow asset of a source table the project reads: what the task loading it declares.

        Its events (from your loader) can schedule the dbt DAG: ``schedule=[project.source_asset(...)]``.
        """
        return source_asset(self, load_graph(self.source()).graph, source, table)


def dbt_task_group(group_id: str, project: DbtProject, **group_kwargs: Any) -> TaskGroup:
    """The project's tasks inside a task group of the DAG being defined (``with DAG(...):``)."""
    with TaskGroup(group_id, **group_kwargs) as group:
        _render(project, serialised=False)
    return group


def dbt_dag(dag_id: str, project: DbtProject, **dag_kwargs: Any) -> DAG:
    """A DAG holding only the project's tasks; ``dag_kwargs`` go to ``DAG`` (schedule, start_date, ...)."""
    loaded = None if project.shape == "single" else load_graph(project.source())
    if loaded is not None and loaded.graph.adapter_type == "duckdb":
        # One writer per file: Airflow serialises the tasks. A user's max_active_tasks wins: the core's
        # DuckDB lock makes tasks on one file take turns (a wait that runs out names the holder).
        dag_kwargs.setdefault("max_active_tasks", 1)
    dag_kwargs.setdefault("doc_md",
                          f"dbt project `{Path(project.project_dir).name}`, shape `{project.shape}`")
    with DAG(dag_id, **dag_kwargs) as dag:
        _render(project, serialised=True, loaded=loaded)
    return dag


def _render(project: DbtProject, *, serialised: bool, loaded: LoadedGraph | None = None) -> None:
    project.checked_dir()
    args = project.common_args()
    # Resolved once, not by each of thousands of tasks: a config lookup per task is a sixth of a render.
    args.setdefault("deferrable", default_deferrable())
    deps = DbtOperator(task_id="dbt_deps", command="deps", doc_md="Installs the project's packages "
                       "(into the runtime root; the project stays read-only).", **args) \
        if project.has_packages() else None
    if project.shape == "single":
        build = DbtOperator(task_id="dbt_build", command="build", select=list(project.select) or None,
                            exclude=list(project.exclude) or None, selector=project.selector,
                            doc_md="The whole selection in one `dbt build`.", **args)
        wire(([(deps, build)] if deps is not None else []) + _failed_builds(project, [build]))
        return
    loaded = loaded or load_graph(project.source())
    with gc_paused():
        _render_graph(project, loaded, serialised, deps, args)


def _render_graph(project: DbtProject, loaded: LoadedGraph, serialised: bool, deps: BaseOperator | None,
                  args: dict[str, Any]) -> None:
    graph = loaded.graph
    note = ""
    if graph.adapter_type == "duckdb" and project.execution == "streamed":
        note = ("DuckDB allows one writing process per database file: here that is the producer's one "
                "dbt build; a node task that builds its node itself (a retry or a clear) takes turns "
                "on the file through the DuckDB lock.")
    elif graph.adapter_type == "duckdb" and serialised:
        note = _DUCKDB_NOTE
    elif graph.adapter_type == "duckdb":
        note = ("DuckDB allows one writing process per database file: give these tasks a pool with one "
                "slot (operator_args={'pool': ...}) or run the enclosing DAG with max_active_tasks=1.")
    ids = task_ids(graph)
    node_assets = NodeAssets.for_render(project, graph)
    tasks: dict[str, BaseOperator] = {}
    edges: list[tuple[BaseOperator, BaseOperator]] = []
    extra_nodes = [n for n in graph.nodes.values() if n.resource_type == "source"]
    factory = NODE_EXECUTIONS[project.execution]
    if project.mapped(len(graph.nodes)):
        _render_mapped(project, graph.nodes, deps, note, args)
        return
    if project.shape == "nodes":
        extra_nodes = list(graph.nodes.values())
    if project.shape == "nodes" and project.execution == "streamed":
        # Made first: its task id carries the enclosing task group's prefix, which node tasks watch.
        tasks[PRODUCER_TASK_ID] = _producer(project, args)
        args = {**args, "stream_from": tasks[PRODUCER_TASK_ID].task_id}
    declare = project.shape == "nodes" and project.execution == "isolated"  # streamed: the producer emits
    for node in extra_nodes:
        tasks[node.unique_id] = factory(node, ids[node.unique_id], node_doc(
            node, "source freshness" if node.resource_type == "source" else
            ("test" if node.resource_type == "test" else "build"), note),
            node_assets.args(node, args) if declare else args)
    if project.shape == "nodes":
        edges += [(tasks[up], tasks[down]) for up, down in graph.edges()]
        # Streamed: no edge from the producer to the node tasks (they start with the run anyway): it
        # stays a leaf, so the DAG run fails when its build failed. Else a failed model whose children
        # dbt skipped left only skipped leaves, and Airflow called the run a success.
    else:
        layers = build_layers(graph, loaded.layers, project.layers)
        for layer in layers:
            tasks[layer.name] = DbtOperator(
                task_id=layer.name, command="build", select=layer.selectors(graph), extra_args=NODE_ARGS,
                doc_md=layer_doc(layer, graph, note), **node_assets.layer_args(layer.members, args))
        edges += [(tasks[up], tasks[layer.name]) for layer in layers for up in layer.upstream]
    streamed = project.shape == "nodes" and project.execution == "streamed"
    if deps is not None and streamed:  # node tasks watch from the start: only the producer waits for deps
        edges.append((deps, tasks[PRODUCER_TASK_ID]))
    elif deps is not None:
        waiting = {id(down) for _, down in edges}
        edges += [(deps, t) for t in tasks.values() if id(t) not in waiting]
    if streamed or project.shape != "nodes":
        building = [tasks[PRODUCER_TASK_ID]] if streamed else [tasks[x.name] for x in layers]
        among = {id(t) for t in building}
        feeding = {id(up) for up, down in edges if id(down) in among}
        edges += _failed_builds(project, building, [t for t in building if id(t) not in feeding])
    wire(edges)


# Operator arguments the failed-builds teardown shares with the project's tasks.
_PLACEMENT = ("owner", "queue", "pool", "pool_slots", "executor", "executor_config", "run_as_user",
              "priority_weight", "weight_rule")


def _failed_builds(project: DbtProject, building: list[BaseOperator],
                   last: list[BaseOperator] | None = None) -> list[tuple[BaseOperator, Any]]:
    """The teardown emitting what ``building`` tasks built before they failed (none when they emit no
    assets), after the ``last`` of them (those no other task waits for: when they are done, all are)."""
    building = [t for t in building if any(isinstance(o, AssetAlias) for o in t.outlets)]
    emitting = {id(t) for t in building}
    last = [t for t in (last if last is not None else building) if id(t) in emitting]
    if not last:
        return []
    teardown = DbtFailedBuildAssetsOperator(
        task_id=FAILED_BUILDS_TASK_ID, dbt_task_ids=[t.task_id for t in building],
        doc_md="Emits the asset events of the tables the dbt tasks built before they failed (Airflow "
               "drops a failed task's own); skipped when none failed.",
        # where and as whom the project's tasks run: a deployment may serve only those queues/executors
        **{k: v for k, v in project.operator_args.items() if k in _PLACEMENT}).as_teardown()
    if len(last) == 1 and not getattr(teardown.dag, "fail_fast", False):
        # After one task, the scheduler skips it when that task did not fail: no worker run for a green
        # build. After several, "one failed" would start it before the others end (a teardown's own
        # rule waits for all); and a fail_fast DAG accepts only that one.
        teardown.trigger_rule = TriggerRule.ONE_FAILED
    return [(t, teardown) for t in last]


def _producer(project: DbtProject, args: dict[str, Any]) -> DbtOperator:
    return DbtOperator(
        task_id=PRODUCER_TASK_ID, command="build", select=list(project.select) or None,
        exclude=list(project.exclude) or None, selector=project.selector, stream_nodes=True,
        doc_md="Builds the whole selection in one detached `dbt build` and streams each node's "
               "result to the node tasks, which wait for it in the triggerer.", **args)


def _render_mapped(project: DbtProject, nodes: Mapping[str, GraphNode], deps: BaseOperator | None, note: str,
                   args: dict[str, Any]) -> None:
    """The producer and one mapped task over the nodes (``node_layout``): a DAG whose size barely grows
    with the node count, so the triggerer's per-trigger cost does not either."""
    producer = _producer(project, args)
    doc = (f"**dbt nodes** of `{Path(project.project_dir).name}`: one map index per model, seed, snapshot "
           f"and standalone test ({len(nodes)}), each born and ended in the triggerer from the producer's "
           "`dbt build`. A retry or a clear of one map index builds only that node, on a worker."
           + (f"\n\n{note}" if note else ""))
    task = mapped_node_task(list(nodes.values()), producer, doc, args)
    register(str(task.dag_id), task.task_id, nodes)
    # No edge from the producer to the node task (its map indexes start with the run anyway): the producer
    # is a leaf, so the DAG run fails when its build failed, as in the task-per-node layout.
    wire([*([(deps, producer)] if deps is not None else []), *_failed_builds(project, [producer])])
