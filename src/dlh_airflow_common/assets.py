"""Airflow assets for the tables dbt builds: what a task declares, and the events it emits.

The URI of each table comes from ``core.assets`` (Airflow-free). A node task of the ``nodes`` shape
declares its node's :class:`Asset`; any other task that builds (``single``, a layer, the streamed
producer, a user's own ``DbtOperator``) declares an :class:`AssetAlias` and attaches one event per
node it built. Airflow registers a task's events only when the task succeeds. See docs/assets.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from airflow.sdk import Asset, AssetAlias

from dlh_airflow_common.core.assets import AssetNamespace, BuiltNode, asset_namespace, read_built
from dlh_airflow_common.core.profile_setup import plain_env

if TYPE_CHECKING:
    from dlh_airflow_common.hooks.dbt import DbtHook

# dbt commands that build tables: a task running one declares what it may emit.
BUILDING_COMMANDS = ("build", "run", "seed", "snapshot", "retry")
# XCom of a failed try: the (URI, extra) of each node it built, for the teardown to emit.
BUILT_KEY = "dlh_dbt_built_assets"


def table_asset(uri: str, like: Asset | None = None) -> Asset:
    """The asset of one table; its name is its URI, as for ``Asset(uri)`` written by hand.

    Built without ``Asset.__init__``: its URI check discovers every provider's asset handlers on first
    use (0.1 s, importing e.g. the S3 hook) and costs 33 us per asset, which at 5,000 models took a
    render past its goal (bench/render.py). Our URIs are already in the form that check gives
    (``core.assets``); ``tests/test_assets.py`` proves the result equal to ``Asset(name=uri, uri=uri)``
    for every adapter's form, so an Airflow that changes the class fails a test, not a parse.
    ``like`` (another asset made here) lends its default field values instead of new ones.
    """
    if len(uri) > _MAX_IDENTIFIER or not _FIELDS:
        return Asset(name=uri, uri=uri)
    asset: Asset = object.__new__(Asset)
    for name, default, takes_self in _FIELDS:
        if default is _URI:
            value: Any = uri
        elif like is not None:
            value = getattr(like, name)  # an asset of ours: the same defaults, shared
        else:
            value = default(asset) if takes_self else default()
        object.__setattr__(asset, name, value)
    return asset


_URI = object()
_MAX_IDENTIFIER = 1500  # Airflow's limit on an asset's name and URI


def _fields() -> tuple[tuple[str, Any, bool], ...]:
    """(name, default factory or _URI, factory takes the asset) per field of ``Asset``; () if unknown."""
    found: list[tuple[str, Any, bool]] = []
    for f in attrs.fields(Asset):
        if f.name in ("name", "uri"):
            found.append((f.name, _URI, False))
        elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            found.append((f.name, f.default.factory, bool(f.default.takes_self)))
        else:
            return ()  # a field this shortcut does not know how to fill: the checked way
    return tuple(found)


_FIELDS = _fields()


def task_alias(dag_id: str | None, task_id: str) -> AssetAlias:
    """What a building task may emit: one alias per task, named after it."""
    return AssetAlias(name=f"dbt/{dag_id}/{task_id}" if dag_id else f"dbt/{task_id}")


def builds(command: str) -> bool:
    return (command.split() or [""])[0] in BUILDING_COMMANDS


def hook_namespace(hook: DbtHook) -> AssetNamespace:
    """The asset namespace of the hook's target (its connection or profiles.yml; looked up once)."""
    output = hook.resolve_profile().output(hook.dbt_project_dir)
    env = {**os.environ, **plain_env(hook.env_vars)}
    return asset_namespace(output, env, hook.project_path())


def emit_built(context: Any, outlets: Iterable[Any], artifacts: Sequence[Path], hook: DbtHook,
               log: logging.Logger | Any, unique_id: str | None = None,
               skip: frozenset[tuple[str, str]] = frozenset()) -> int:
    """One asset event per node the runs in ``artifacts`` built, through what the task declared.

    ``artifacts`` are artifact dirs, oldest first (an earlier failed try's, then this try's); a node
    built by several gets the newest. A node task (``unique_id``) declares its node's asset: that
    event gets the extras (Airflow emits it), and no manifest is read. Otherwise each node goes
    through the task's alias, or onto a declared asset with its URI; none for the (unique id,
    invocation id) pairs in ``skip`` (already emitted by the teardown). Returns how many events carry a
    built node.
    """
    declared = {o.uri: o for o in outlets if isinstance(o, Asset)}
    alias = next((o for o in outlets if isinstance(o, AssetAlias)), None)
    events: MutableMapping[Any, Any] = context["outlet_events"]
    run_id = str(context["run_id"])
    if unique_id is not None and declared:
        built = _newest(artifacts, only={unique_id})
        for node, invocation_id in built:
            for asset in declared.values():
                events[asset].extra.update(_extra(node, invocation_id, run_id))
        return len(built)
    if alias is None:
        return 0
    emitted = 0
    for uri, extra in alias_events(artifacts, hook, log, run_id, skip):
        if uri in declared:  # the user declared it too: one event, with the extras
            events[declared[uri]].extra.update(extra)
        else:
            events[alias].add(table_asset(uri), extra=extra)
        emitted += 1
    if emitted:
        log.info("Asset events for %d built node(s) through alias %s", emitted, alias.name)
    return emitted


def alias_events(artifacts: Sequence[Path], hook: DbtHook, log: logging.Logger | Any, run_id: str,
                 skip: frozenset[tuple[str, str]] = frozenset()) -> list[tuple[str, dict[str, Any]]]:
    """(URI, extra) per node the runs in ``artifacts`` built and not in ``skip``; none whose URI would
    hold a secret."""
    built = [(node, inv) for node, inv in _newest(artifacts) if (node.unique_id, str(inv)) not in skip]
    if not built:
        return []
    namespace = hook_namespace(hook)
    secrets = hook.resolve_profile().secrets
    found: list[tuple[str, dict[str, Any]]] = []
    for node, invocation_id in built:
        assert node.relation is not None  # read with the manifest
        uri = namespace.uri(node.relation)
        if any(secret in uri for secret in secrets):
            log.warning("No asset event for %s: its URI would hold a secret of the profile", node.unique_id)
            continue
        found.append((uri, _extra(node, invocation_id, run_id)))
    return found


def keep_for_teardown(context: Any, outlets: Iterable[Any], artifacts: Sequence[Path], hook: DbtHook,
                      log: logging.Logger | Any, skip: frozenset[tuple[str, str]] = frozenset()) -> int:
    """A failing task's built nodes, kept (XCom ``BUILT_KEY``) for :class:`DbtFailedBuildAssetsOperator`.

    Airflow registers no event of a failed task, but the tables dbt built before the failure are new:
    a teardown task emits them. Returns how many were kept.
    """
    if not any(isinstance(o, AssetAlias) for o in outlets):
        return 0
    found = alias_events(artifacts, hook, log, str(context["run_id"]), skip)
    if found:
        context["ti"].xcom_push(key=BUILT_KEY, value=[{"uri": uri, "extra": extra} for uri, extra in found])
        log.info("%d node(s) were built before this try failed: if it is the last try, the teardown "
                 "task emits their asset events (docs/assets.md)", len(found))
    return len(found)


def _newest(artifacts: Sequence[Path], only: set[str] | None = None) -> list[tuple[BuiltNode, str | None]]:
    """Each built node once, from the newest run that built it, with that run's invocation id."""
    newest: dict[str, tuple[BuiltNode, str | None]] = {}
    for folder in artifacts:
        nodes, invocation = read_built(folder, only)
        newest.update({node.unique_id: (node, invocation) for node in nodes})
    return list(newest.values())


def _extra(node: BuiltNode, invocation_id: str | None, run_id: str) -> dict[str, Any]:
    """What the UI shows with the event: dbt's outcome of the node and the runs that built it."""
    return {"dbt_unique_id": node.unique_id, "dbt_status": node.status, "rows_affected": node.rows_affected,
            "execution_time_s": node.execution_time, "dbt_invocation_id": invocation_id, "dag_run_id": run_id}


__all__ = ["BUILDING_COMMANDS", "BUILT_KEY", "alias_events", "builds", "emit_built", "hook_namespace",
           "keep_for_teardown", "table_asset", "task_alias"]
