"""What rendered tasks declare: a node task its node's asset (outlet) and the sources it reads (inlets).

Resolved once per render: the target's address (one connection lookup), then an ``Asset`` per node,
and one per source shared by every task reading it. A target that cannot name its tables (no
connection where the DAG is parsed, an in-memory DuckDB) leaves the node tasks without assets and
says why in the parse log; the render never fails for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from dlh_airflow_common.assets import table_asset
from dlh_airflow_common.core.assets import AssetNamespace, DbtAssetUriException, Relation
from dlh_airflow_common.rendering.graph import TASK_TYPES, DbtGraph, GraphNode

if TYPE_CHECKING:
    from dlh_airflow_common.rendering.project import DbtProject

log = logging.getLogger(__name__)


@dataclass
class NodeAssets:
    """The assets of one render; ``namespace`` None declares nothing."""

    graph: DbtGraph
    namespace: AssetNamespace | None
    _sources: dict[str, Asset] = field(default_factory=dict)
    _first: Asset | None = None

    @classmethod
    def for_render(cls, project: DbtProject, graph: DbtGraph) -> NodeAssets:
        if project.operator_args.get("emit_assets", True) is False:
            return cls(graph, None)
        try:
            namespace = project.asset_namespace()
        except Exception as exc:  # a parse must not fail for assets: say why, declare none
            log.warning("The tasks of dbt project %s declare no assets: %s: %s", graph.project_name,
                        type(exc).__name__, exc)
            namespace = None
        return cls(graph, namespace)

    def args(self, node: GraphNode, args: Mapping[str, Any]) -> Mapping[str, Any]:
        """``args`` plus the node's asset as outlet and its sources as inlets (a built node only)."""
        relation = self.graph.relation(node.unique_id)
        if self.namespace is None or node.resource_type not in TASK_TYPES or relation is None:
            return args
        # Tuples, and no inlets key without sources: Airflow keeps every task's init arguments besides
        # its own lists, so each object here stays alive per task (bench/render.py's RSS goal).
        own = {"outlets": (*args.get("outlets", ()), self._asset(relation))}
        if node.sources or "inlets" in args:
            own["inlets"] = (*args.get("inlets", ()), *self._inlets(node.sources))
        return {**args, **own}

    def layer_args(self, members: Iterable[str], args: Mapping[str, Any]) -> Mapping[str, Any]:
        """``args`` plus, as inlets, the sources a layer's nodes read (it emits through its alias)."""
        if self.namespace is None:
            return args
        read = sorted({src for uid in members for src in self.graph.nodes[uid].sources})
        return {**args, "inlets": (*args.get("inlets", ()), *self._inlets(read))} if read else args

    def _asset(self, relation: Relation) -> Asset:
        """The relation's asset; the assets of one render share their empty extra, watchers and access
        control (nothing writes them; at 5,000 models, 1 MB)."""
        assert self.namespace is not None
        asset = table_asset(self.namespace.uri(relation), like=self._first)
        self._first = self._first or asset
        return asset

    def _inlets(self, sources: Iterable[str]) -> list[Asset]:
        assert self.namespace is not None
        found: list[Asset] = []
        for src in sources:
            if src not in self._sources:
                relation = self.graph.relation(src)
                if relation is None:
                    continue
                self._sources[src] = self._asset(relation)
            found.append(self._sources[src])
        return found


def model_asset(project: DbtProject, graph: DbtGraph, name: str) -> Asset:
    """The asset of the built node called ``name`` (or with that unique id); a clear error otherwise."""
    matches = [n for n in graph.nodes.values() if n.resource_type in TASK_TYPES
               and name in (n.name, n.unique_id)]
    if len(matches) != 1:
        known = sorted(n.name for n in graph.nodes.values() if n.resource_type in TASK_TYPES)
        why = (f"{len(matches)} nodes are called {name!r} ({', '.join(n.unique_id for n in matches)}): pass "
               "the unique id" if matches else
               f"no model, seed or snapshot called {name!r} in dbt project {graph.project_name!r}'s "
               f"selection (it has: {', '.join(known[:30])}{' ...' if len(known) > 30 else ''})")
        raise DbtAssetUriException(why)
    relation = graph.relation(matches[0].unique_id)
    assert relation is not None  # every built node has one
    return table_asset(project.asset_namespace().uri(relation))


def source_asset(project: DbtProject, graph: DbtGraph, source: str, table: str) -> Asset:
    """The asset of the source table ``source.table`` the project reads (what a loader declares)."""
    matches = [uid for uid in graph.source_relations if uid.split(".")[-2:] == [source, table]]
    if len(matches) != 1:
        known = sorted(".".join(uid.split(".")[-2:]) for uid in graph.source_relations)
        raise DbtAssetUriException(
            f"{len(matches)} sources of dbt project {graph.project_name!r} are {source}.{table} "
            f"({', '.join(matches) or 'none'}); the selection reads: {', '.join(known[:30]) or 'no source'}"
            if matches else
            f"dbt project {graph.project_name!r}'s selection reads no source table {source}.{table} "
            f"(it reads: {', '.join(known[:30]) or 'no source'}); check the source and table names")
    relation = graph.relation(matches[0])
    assert relation is not None
    return table_asset(project.asset_namespace().uri(relation))


__all__ = ["NodeAssets", "model_asset", "source_asset"]
