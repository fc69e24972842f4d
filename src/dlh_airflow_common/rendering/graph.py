"""The part of dbt's manifest a DAG needs, as a small graph that is cheap to cache and load.

Built from ``manifest.json`` plus the unique ids dbt itself selected (``dbt ls``); no selector
grammar of ours. What becomes a task:

- models (except ephemeral ones, which fold into their children), seeds and snapshots: one task each;
- a test runs inside the task of its *last parent* when it has one: a parent node with a task of which
  every other parent (sources aside) is an ancestor. That task runs ``dbt build --select <node>
  --indirect-selection buildable``, and dbt's ``buildable`` rule picks exactly these tests: those
  whose parents are all the node, its ancestors or sources. So a one-parent test, and a
  ``relationships`` test to a model upstream of its own, fail the node's task; the choice is dbt's
  grammar, and this module only mirrors it to show the tests in the task doc and to give none of them
  a second task;
- any other test (parents on separate branches, e.g. ``relationships`` between two staging models,
  or a test of a source) gets a task of its own after all of its parents;
- sources with a freshness rule, when asked for: a ``source freshness`` task before their readers.

Edges pass through nodes that are not tasks (ephemeral or unselected), so the order is dbt's.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dlh_airflow_common.core.assets import Relation
from dlh_airflow_common.core.exceptions import DbtProjectException
from dlh_airflow_common.core.names import safe_name

TASK_TYPES = ("model", "seed", "snapshot")
FORMAT_VERSION = 4  # 3: tests attached to their last parent (buildable), task ids; 4: relations (assets)
MAX_TASK_ID = 200


class DbtGraphError(DbtProjectException):
    """The selection or layer layout cannot become a DAG; the message names the nodes."""


@dataclass(slots=True)
class GraphNode:
    """One task-to-be: a node (model/seed/snapshot), a standalone test, or a source's freshness."""

    unique_id: str
    resource_type: str  # model | seed | snapshot | test | source
    name: str
    package: str
    selector: str  # what to pass to dbt --select to run exactly this node
    path: str = ""
    materialization: str = ""
    upstream: list[str] = field(default_factory=list)  # unique ids of upstream graph nodes
    tests: list[str] = field(default_factory=list)  # unique ids of tests run with this node
    sources: list[str] = field(default_factory=list)  # sources this node reads (through ephemerals)
    version: str | None = None
    task_id: str = ""  # the Airflow task id (see assign_task_ids), cached with the graph
    relation: str | None = None  # what it builds: core.assets.Relation, packed


_FIELDS = tuple(f.name for f in fields(GraphNode))


@dataclass
class DbtGraph:
    """The rendered graph: ``nodes`` in dbt's topological-friendly manifest order."""

    project_name: str
    adapter_type: str
    nodes: dict[str, GraphNode]
    # the packed relation of each source a rendered node reads: the inlets of its task
    source_relations: dict[str, str] = field(default_factory=dict)

    # -- cache form -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nodes as rows in ``GraphNode`` field order: a DAG file parses this on every import, and rows
        parse faster and peak smaller than one JSON object per node."""
        return {"format": FORMAT_VERSION, "project_name": self.project_name,
                "adapter_type": self.adapter_type, "fields": list(_FIELDS),
                "nodes": [[getattr(n, f) for f in _FIELDS] for n in self.nodes.values()],
                "sources": self.source_relations}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DbtGraph:
        if data.get("format") != FORMAT_VERSION or data.get("fields") != list(_FIELDS):
            raise ValueError("cached graph of another format")
        nodes = [GraphNode(*row) for row in data["nodes"]]
        return cls(data["project_name"], data["adapter_type"], {n.unique_id: n for n in nodes},
                   data["sources"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> DbtGraph:
        return cls.from_dict(json.loads(text))

    # -- views ----------------------------------------------------------------------------------
    def edges(self) -> set[tuple[str, str]]:
        """(upstream, downstream) pairs of unique ids."""
        return {(up, n.unique_id) for n in self.nodes.values() for up in n.upstream}

    def of_type(self, *types: str) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.resource_type in types]

    def relation(self, unique_id: str) -> Relation | None:
        """Where a built node or a read source lives (None for tests and unknown ids)."""
        node = self.nodes.get(unique_id)
        packed = node.relation if node is not None else self.source_relations.get(unique_id)
        return None if not packed else Relation.unpack(packed)


def _fqn_selector(node: Mapping[str, Any]) -> str:
    return "fqn:" + ".".join(str(p) for p in node.get("fqn") or [node["name"]])


def build_graph(manifest: Mapping[str, Any], selected: Iterable[str] | None = None, *,
                source_freshness: bool = False) -> DbtGraph:
    """The task graph of ``selected`` (every enabled node when None) in ``manifest``."""
    nodes: Mapping[str, Any] = manifest.get("nodes") or {}
    sources: Mapping[str, Any] = manifest.get("sources") or {}
    chosen = list(nodes) + list(sources) if selected is None else list(selected)
    unknown = [u for u in chosen if u not in nodes and u not in sources]
    task_ids = [u for u in chosen if u in nodes and _is_task_node(nodes[u])]
    is_task = set(task_ids)

    # Nearest task ancestors (and sources read) of any node, through ephemeral/unselected nodes.
    memo: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def ancestors(uid: str, stack: frozenset[str] = frozenset()) -> tuple[frozenset[str], frozenset[str]]:
        if uid in memo:
            return memo[uid]
        if uid in stack:
            raise DbtGraphError(f"dbt's manifest has a cycle through {uid}")
        ups: set[str] = set()
        srcs: set[str] = set()
        for parent in _parents(nodes.get(uid) or {}):
            if parent in sources:
                srcs.add(parent)
            elif parent in is_task:
                ups.add(parent)
            elif parent in nodes:
                more, more_srcs = ancestors(parent, stack | {uid})
                ups |= more
                srcs |= more_srcs
        memo[uid] = (frozenset(ups), frozenset(srcs))
        return memo[uid]

    out: dict[str, GraphNode] = {}
    for uid in task_ids:
        node = nodes[uid]
        ups, srcs = ancestors(uid)
        out[uid] = GraphNode(
            unique_id=uid, resource_type=node["resource_type"], name=node["name"],
            package=node.get("package_name") or "", selector=_fqn_selector(node),
            path=node.get("original_file_path") or node.get("path") or "",
            materialization=str((node.get("config") or {}).get("materialized") or node["resource_type"]),
            upstream=sorted(ups), sources=sorted(srcs),
            version=None if node.get("version") is None else str(node["version"]),
            relation=Relation.of(node).packed(),
        )
    for uid in chosen:
        node = nodes.get(uid)
        if node is None or node.get("resource_type") != "test":
            continue
        parents = list(dict.fromkeys(_parents(node)))
        home = _last_parent(parents, out, nodes, sources)
        if home is not None:
            out[home].tests.append(uid)  # runs in its last parent's `dbt build` (buildable)
            continue
        test_ups: set[str] = set()
        test_srcs: set[str] = set()
        for parent in parents:
            if parent in out:
                test_ups.add(parent)
            elif parent in sources:
                test_srcs.add(parent)
            elif parent in nodes:
                more, more_srcs = ancestors(parent)
                test_ups |= more
                test_srcs |= more_srcs
        out[uid] = GraphNode(
            unique_id=uid, resource_type="test", name=node["name"], package=node.get("package_name") or "",
            selector=_fqn_selector(node), path=node.get("original_file_path") or "",
            materialization="test", upstream=sorted(test_ups), sources=sorted(test_srcs),
        )
    if source_freshness:
        _add_freshness(out, sources)
    assign_task_ids(out.values())
    read = {src for n in out.values() for src in n.sources}
    graph = DbtGraph(
        project_name=str((manifest.get("metadata") or {}).get("project_name") or ""),
        adapter_type=str((manifest.get("metadata") or {}).get("adapter_type") or ""),
        nodes=out,
        source_relations={src: Relation.of(sources[src]).packed() for src in sorted(read)},
    )
    if unknown and selected is not None:
        raise DbtGraphError(f"dbt selected nodes the manifest does not have: {', '.join(unknown[:10])}; "
                            "the manifest is older than the project: rebuild it (dbt parse)")
    return graph


def _last_parent(parents: list[str], out: Mapping[str, GraphNode], nodes: Mapping[str, Any],
                 sources: Mapping[str, Any]) -> str | None:
    """The parent task whose ``dbt build --indirect-selection buildable`` runs this test, if any.

    dbt's rule (``buildable``): a test of a selected node is built when each of its parents is
    selected, an ancestor of a selected node, or a source. With one node selected, that is the parent
    of which every other parent is an ancestor in the whole manifest (unselected and ephemeral nodes
    included).
    """
    others = [p for p in parents if p not in sources]
    for candidate in others:
        if candidate in out and _all_ancestors(candidate, {p for p in others if p != candidate}, nodes):
            return candidate
    return None


def _all_ancestors(node: str, wanted: set[str], nodes: Mapping[str, Any]) -> bool:
    """Whether every id in ``wanted`` is upstream of ``node`` (a walk that stops once all are seen)."""
    seen: set[str] = set()
    stack = [node]
    while wanted and stack:
        for parent in _parents(nodes.get(stack.pop()) or {}):
            if parent not in seen:
                seen.add(parent)
                wanted.discard(parent)
                stack.append(parent)
    return not wanted


def assign_task_ids(nodes: Iterable[GraphNode]) -> None:
    """Readable, stable ids: ``<resource>.<name>``, with the package only where names collide.

    Set once when the graph is built, so a cached render does not recompute them for every node."""
    def short(node: GraphNode) -> str:
        return f"{node.name}.v{node.version}" if node.version else node.name

    listed = list(nodes)
    counts = Counter((n.resource_type, short(n)) for n in listed)
    for node in listed:
        parts = [node.resource_type, short(node)]
        if counts[(node.resource_type, short(node))] > 1:
            parts.insert(1, node.package)
        node.task_id = _task_id(".".join(parts))
    clashes = Counter(n.task_id for n in listed)
    for node in listed:
        if clashes[node.task_id] > 1:  # same package and name (truncated test names): the id's hash decides
            node.task_id = _task_id(f"{node.task_id}.{node.unique_id.rsplit('.', 1)[-1]}")


def _task_id(text: str) -> str:
    text = safe_name(text, keep=".")
    if len(text) <= MAX_TASK_ID:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[:MAX_TASK_ID - 11]}_{digest}"


def _is_task_node(node: Mapping[str, Any]) -> bool:
    if node.get("resource_type") not in TASK_TYPES:
        return False
    return (node.get("config") or {}).get("materialized") != "ephemeral"


def _parents(node: Mapping[str, Any]) -> list[str]:
    return list((node.get("depends_on") or {}).get("nodes") or [])


def _add_freshness(out: dict[str, GraphNode], sources: Mapping[str, Any]) -> None:
    """A freshness task per source that has a rule and that a rendered node reads."""
    read: dict[str, list[GraphNode]] = {}
    for node in out.values():
        for src in node.sources:
            read.setdefault(src, []).append(node)
    for src_id in sorted(read):
        src = sources[src_id]
        if not _has_freshness_rule(src):
            continue
        out[src_id] = GraphNode(
            unique_id=src_id, resource_type="source", name=f"{src['source_name']}.{src['name']}",
            package=src.get("package_name") or "", selector=f"source:{src['source_name']}.{src['name']}",
            path=src.get("original_file_path") or "", materialization="source freshness",
        )
        for reader in read[src_id]:
            reader.upstream.append(src_id)


def _has_freshness_rule(source: Mapping[str, Any]) -> bool:
    rule = source.get("freshness") or {}
    return any((rule.get(k) or {}).get("count") for k in ("warn_after", "error_after"))


@dataclass
class Layer:
    """One task of the ``layers`` shape: the nodes its selector picked, in one ``dbt build``."""

    name: str
    selector: str
    members: list[str]  # unique ids of models/seeds/snapshots (their attached tests run with them)
    tests: list[str]  # standalone tests whose last parent is built here
    upstream: list[str]  # names of layers (and unique ids of freshness tasks) this one waits for

    def selectors(self, graph: DbtGraph) -> list[str]:
        return [graph.nodes[u].selector for u in [*self.members, *self.tests]]


def build_layers(graph: DbtGraph, membership: Mapping[str, Iterable[str]],
                 selectors: Mapping[str, str]) -> list[Layer]:
    """Assign every rendered node to exactly one layer and order the layers by the manifest's edges.

    ``membership`` maps a layer name to the unique ids dbt selected for its selector.
    """
    order = list(membership)
    owner: dict[str, list[str]] = {}
    for name in order:
        for uid in membership[name]:
            node = graph.nodes.get(uid)
            if node is not None and node.resource_type in TASK_TYPES:
                owner.setdefault(uid, []).append(name)
    built = [n for n in graph.nodes.values() if n.resource_type in TASK_TYPES]
    twice = {n.unique_id: owner[n.unique_id] for n in built if len(owner.get(n.unique_id, [])) > 1}
    if twice:
        listed = "; ".join(f"{uid} in {' and '.join(names)}" for uid, names in list(twice.items())[:20])
        raise DbtGraphError(f"{len(twice)} node(s) are selected by more than one layer: {listed}. "
                            "Make the layer selectors disjoint (e.g. add --exclude terms).")
    nowhere = [n.unique_id for n in built if n.unique_id not in owner]
    if nowhere:
        raise DbtGraphError(f"{len(nowhere)} selected node(s) belong to no layer: {', '.join(nowhere[:20])}. "
                            "Add a layer that selects them, or exclude them from the selection.")
    layer_of = {uid: names[0] for uid, names in owner.items()}
    layers = {name: Layer(name, selectors[name], [], [], []) for name in order}
    for node in built:
        layers[layer_of[node.unique_id]].members.append(node.unique_id)
    position = {name: i for i, name in enumerate(order)}
    for node in graph.of_type("test"):
        parent_layers = [layer_of[u] for u in node.upstream if u in layer_of]
        home = max(parent_layers, key=position.__getitem__) if parent_layers else next(
            (name for name in order if node.unique_id in set(membership[name])), order[0])
        layers[home].tests.append(node.unique_id)
        layer_of[node.unique_id] = home
    edges: dict[str, set[str]] = {name: set() for name in order}
    witness: dict[tuple[str, str], tuple[str, str]] = {}
    for uid, name in layer_of.items():
        for up in graph.nodes[uid].upstream:
            up_layer = layer_of.get(up)
            if up_layer is None:  # a freshness task
                edges[name].add(up)
            elif up_layer != name:
                edges[name].add(up_layer)
                witness.setdefault((up_layer, name), (up, uid))
    _check_acyclic(order, edges, witness)
    for name in order:
        layers[name].upstream = sorted(edges[name], key=lambda e: position.get(e, -1))
    return [layers[name] for name in order]


def _check_acyclic(order: list[str], edges: Mapping[str, set[str]],
                   witness: Mapping[tuple[str, str], tuple[str, str]]) -> None:
    """Kahn's algorithm over the layers; a cycle names the layers and a node edge for each step."""
    indegree = {name: len([e for e in edges[name] if e in edges]) for name in order}
    ready = [n for n in order if indegree[n] == 0]
    done: set[str] = set()
    while ready:
        name = ready.pop()
        done.add(name)
        for other in order:
            if name in edges[other]:
                indegree[other] -= 1
                if indegree[other] == 0:
                    ready.append(other)
    stuck = [n for n in order if n not in done]
    if stuck:
        steps = [f"{a} -> {b} ({witness[(a, b)][0]} -> {witness[(a, b)][1]})"
                 for (a, b) in witness if a in stuck and b in stuck]
        raise DbtGraphError(f"The layers {', '.join(stuck)} depend on each other in a cycle: "
                            f"{'; '.join(steps[:10])}. Move nodes so that each layer only reads "
                            "from layers before it.")
