"""Retention of what runs leave under the runtime root, so nothing piles up on a long-lived volume.

Kinds of dirs, each pruned on its own (patterns relative to the runtime root)::

    runs/*               run dirs kept with keep_target_artifacts (or left by a killed worker)
    retry_state/*/*/*    a failed try's state, useless once the task finally failed
    deferred/*           control dirs of deferred runs (a killed task's, a lost worker's)
    streams/*/*          control dirs of streamed per-node producers (one per DAG run)
    state/*/runs/*       per-run target dirs of pipelines (the Salesforce pipeline's failed runs)

A dir goes when nothing marks it alive and it is older than ``max_age``, or it is beyond the newest
``keep`` of its kind and older than ``min_age``. Alive: a process holds the lock on its ``.dlh_active``
file (a running dbt, a running supervisor), or its ``status.json`` shows a heartbeat from a
supervisor on another host. Age is the newest mtime of the dir and its direct entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("runs/*", "retry_state/*/*/*", "deferred/*", "streams/*/*", "state/*/runs/*")
ACTIVE_FILE = ".dlh_active"
STAMP_FILE = ".retention"
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
        self._fd: int | None = os.open(path / ACTIVE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_alive(path: Path) -> bool:
    """Whether a run still uses ``path`` (its lock is held, or its supervisor's heartbeat is fresh)."""
    with contextlib.suppress(OSError):
        fd = os.open(path / ACTIVE_FILE, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    try:
        status = json.loads((path / "status.json").read_text())
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
        for path in root.glob(pattern):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    dated.append((last_activity(path), path))
        dated.sort(reverse=True)
        for rank, (active_at, path) in enumerate(dated):
            age = now - active_at
            if age < policy.min_age or (age <= policy.max_age and rank < policy.keep):
                continue
            if is_alive(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            _remove_empty_parents(path, pattern)
    return removed


def _remove_empty_parents(path: Path, pattern: str) -> None:
    """Leave no empty ``<dag>/<task>`` behind: the parents the pattern's inner ``*`` stand for."""
    for parent, part in zip(path.parents, reversed(pattern.split("/")[:-1]), strict=False):
        if part != "*":
            return
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
        root.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        removed = prune(root, policy, kinds=kinds)
    except OSError as exc:
        log.warning("Could not prune the runtime root %s: %s", root, exc)
        return None
    if removed:
        log.info("Retention removed %d old dirs under %s", len(removed), root)
    return removed
