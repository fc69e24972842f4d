"""Retention of what runs leave under the runtime root, so nothing piles up on a long-lived volume.

Kinds of dirs, each pruned on its own (patterns relative to the runtime root)::

    runs/*               run dirs kept with keep_target_artifacts (or left by a killed worker)
    retry_state/*/*/*    a failed try's state, useless once the task finally failed
    deferred/*           control dirs of deferred runs (a killed task's, a lost worker's)
    streams/*/*/*        control dirs of streamed per-node producers (one per launch, per DAG run)
    state/*/runs/*       per-run target dirs of pipelines (the Salesforce pipeline's failed runs)

A project's cache (``projects/*``: its shared shadows, packages, rendered graphs) goes once the
project dir it was made for is gone (an old DAG bundle version, removed by Airflow's own bundle
cleanup), it is older than ``min_age`` and no run holds one of its shadows.

A dir goes when nothing marks it alive and it is older than ``max_age``, or it is beyond the newest
``keep`` of its kind and older than ``min_age``. Alive: a process holds the lock on its ``.dlh_active``
file (a running dbt, a running supervisor), or its ``status.json`` shows a heartbeat from a
supervisor on another host. Age is the newest mtime of the dir and its direct entries.

The walk never enters a symlink and removal goes through :func:`safefs.remove_tree`: a link planted
in the root (``streams/evil -> <a victim's dir>``) is skipped, never followed to what it names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dlh_airflow_common.core.safefs import is_plain_dir, open_state_file, remove_tree, secure_root, touch

log = logging.getLogger(__name__)

KINDS = ("runs/*", "retry_state/*/*/*", "deferred/*", "streams/*/*/*", "state/*/runs/*")
ACTIVE_FILE = ".dlh_active"
PROJECT_SOURCE = ".dlh_project"  # in a project's cache: the project dir it was made for
SHADOW_LOCK = ".shadow.lock"  # in a project's cache: one shadow builder (or pruner) at a time
IN_USE = ".dlh_in_use"  # in a shadow version: runs hold a shared flock on it, a pruner an exclusive one
STAMP_FILE = ".retention"
CURRENT_LINK = "current"  # streams/<dag>/<run>/current -> the producer's newest launch dir
HEARTBEAT_ALIVE = 600.0  # a running supervisor beats every 5 s; a stale beat is a lost host


@dataclass(frozen=True)
class Retention:
    """How much to keep; ``every`` limits pruning to once per that many seconds per runtime root."""

    max_age: float = 7 * 86400.0
    keep: int = 100
    min_age: float = 3600.0
    every: float = 600.0


class ActiveMark:
    """An exclusive lock on ``<dir>/.dlh_active`` while a run uses the dir; the OS drops it if we die."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = open_state_file(path / ACTIVE_FILE)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_alive(path: Path) -> bool:
    """Whether a run still uses ``path`` (its lock is held, or its supervisor's heartbeat is fresh)."""
    with contextlib.suppress(OSError):
        fd = os.open(path / ACTIVE_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    try:
        fd = os.open(path / "status.json", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            status = json.loads(fh.read())
    except (OSError, ValueError):
        return False
    if not isinstance(status, dict) or status.get("state") in {"success", "failed", "cancelled"}:
        return False
    return time.time() - float(status.get("heartbeat") or 0) < HEARTBEAT_ALIVE


def last_activity(path: Path) -> float:
    newest = path.lstat().st_mtime
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def prune(root: Path, policy: Retention, now: float | None = None,
          kinds: tuple[str, ...] = KINDS) -> list[Path]:
    """Remove what ``policy`` does not keep under ``root``; return the removed dirs."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    for pattern in kinds:
        dated = []
        for path in _plain_dirs(root, pattern.split("/")):
            with contextlib.suppress(OSError):
                dated.append((last_activity(path), path))
        dated.sort(reverse=True)
        for rank, (active_at, path) in enumerate(dated):
            age = now - active_at
            if age < policy.min_age or (age <= policy.max_age and rank < policy.keep):
                continue
            if is_alive(path):
                continue
            if remove_tree(root, path):
                removed.append(path)
                _remove_empty_parents(path, pattern)
    return removed + prune_projects(root, policy, now)


def prune_projects(root: Path, policy: Retention, now: float | None = None) -> list[Path]:
    """Remove the caches of projects whose dir is gone (see the module doc); return them."""
    now = time.time() if now is None else now
    removed = []
    for cache in _plain_dirs(root, ["projects", "*"]):
        try:
            fd = os.open(cache / PROJECT_SOURCE, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "r") as fh:
                source = fh.read().strip()
        except OSError:
            continue  # made before this rule: what it served is unknown, kept
        with contextlib.suppress(OSError):
            if not source or Path(source).is_dir() or now - last_activity(cache) < policy.min_age:
                continue
            if _remove_unheld(root, cache):
                removed.append(cache)
    return removed


def _remove_unheld(root: Path, cache: Path) -> bool:
    """Remove a project cache while holding its builder lock and every shadow's lock; none if in use."""
    held: list[int] = []
    try:
        for lock in [cache / SHADOW_LOCK, *(v / IN_USE for v in _plain_dirs(cache, ["shadows", "*"]))]:
            with contextlib.suppress(FileNotFoundError):
                held.append(os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
                fcntl.flock(held[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return remove_tree(root, cache)
    except OSError:  # a run holds a shadow (or a builder builds one): kept
        return False
    finally:
        for fd in held:
            os.close(fd)


def _plain_dirs(here: Path, parts: list[str]) -> list[Path]:
    """The real dirs (no symlinks, on the way or at the end) that ``parts`` (names or ``*``) match."""
    if not parts:
        return [here]
    first, rest = parts[0], parts[1:]
    found: list[Path] = []
    if first != "*":
        return _plain_dirs(here / first, rest) if is_plain_dir(here / first) else []
    with contextlib.suppress(OSError), os.scandir(here) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found += _plain_dirs(Path(entry.path), rest)
    return found


def _remove_empty_parents(path: Path, pattern: str) -> None:
    """Leave no empty ``<dag>/<task>`` behind: the parents the pattern's inner ``*`` stand for.

    A streamed run's dir keeps only the ``current`` link to its last launch: gone with the launch.
    """
    for parent, part in zip(path.parents, reversed(pattern.split("/")[:-1]), strict=False):
        if part != "*":
            return
        current = parent / CURRENT_LINK
        if current.is_symlink() and not current.exists():
            with contextlib.suppress(OSError):
                current.unlink()
        with contextlib.suppress(OSError):
            parent.rmdir()


def maybe_prune(root: Path, policy: Retention, kinds: tuple[str, ...] = KINDS) -> list[Path] | None:
    """Prune at most once per ``policy.every`` seconds per root (one ``stat`` otherwise); never raises."""
    stamp = root / STAMP_FILE
    try:
        if time.time() - stamp.stat().st_mtime < policy.every:
            return None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        root = secure_root(root)
        touch(stamp)
        removed = prune(root, policy, kinds=kinds)
    except OSError as exc:
        log.warning("Could not prune the runtime root %s: %s", root, exc)
        return None
    if removed:
        log.info("Retention removed %d old dirs under %s", len(removed), root)
    return removed
