"""Retention in the state store: old launches go, as their control dirs do on disk.

The same policy as ``core.retention`` (``Retention``), per kind: a producer launch under
``streams/<dag>/<run>/``, or a deferred run's mirror under ``deferred/`` (a killed or lost task's), goes
when it is older than ``max_age``, or beyond the newest ``keep`` and older than ``min_age``, unless
its heartbeat object is fresh (a producer still running). Age is the newest modification time of the
launch's objects, by the store's clock. At most once per ``every`` seconds per store prefix (a stamp
object): one get per producer start otherwise.
"""

from __future__ import annotations

import logging
import time

from dlh_airflow_common.core.retention import HEARTBEAT_ALIVE, Retention
from dlh_airflow_common.core.store import ObjectInfo, StateStore
from dlh_airflow_common.core.store_stream import HEARTBEAT

log = logging.getLogger(__name__)

STAMP = ".retention"
KINDS = {"streams": 3, "deferred": 1}  # prefix -> how many key parts below it name one launch


def prune_store(store: StateStore, policy: Retention, now: float | None = None) -> list[str]:
    """Remove the launches ``policy`` does not keep; return their keys (relative to the store's base)."""
    removed = []
    for kind, depth in KINDS.items():
        removed += _prune_kind(store, policy, kind, depth, time.time() if now is None else now)
    return removed


def _prune_kind(store: StateStore, policy: Retention, kind: str, depth: int, now: float) -> list[str]:
    launches: dict[str, list[tuple[str, ObjectInfo]]] = {}
    for key, info in store.objects(kind).items():
        parts = key.split("/")
        if len(parts) > depth:
            launch, rest = "/".join(parts[:depth]), "/".join(parts[depth:])
            launches.setdefault(launch, []).append((rest, info))
    dated = sorted(((max(i.modified for _, i in objs), launch, objs) for launch, objs in launches.items()),
                   reverse=True)
    removed = []
    for rank, (active_at, launch, objs) in enumerate(dated):
        age = now - active_at
        if age < policy.min_age or (age <= policy.max_age and rank < policy.keep):
            continue
        beat = dict(objs).get(HEARTBEAT)
        if beat is not None and now - beat.modified < HEARTBEAT_ALIVE:
            continue  # a producer still running (with a min_age below HEARTBEAT_ALIVE)
        store.remove(kind, launch)
        removed.append(f"{kind}/{launch}")
    return removed


def maybe_prune_store(store: StateStore, policy: Retention) -> list[str] | None:
    """Prune at most once per ``policy.every`` seconds per store; never raises (no task fails on it)."""
    try:
        stamp = store.get(STAMP)
        if stamp is not None and time.time() - float(stamp or 0) < policy.every:
            return None
        store.put(str(time.time()).encode(), STAMP)
        removed = prune_store(store, policy)
    except Exception as exc:
        log.warning("State store retention skipped: %s", exc)
        return None
    if removed:
        log.info("State store retention removed %d old launches from %s", len(removed), store.url)
    return removed
