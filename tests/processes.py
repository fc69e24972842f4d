"""Find the dbt processes a test started, by what they are, so "nothing left running" checks can fail.

A dbt child is not always a ``bin/dbt`` command line: the default runner starts
``python -m dlh_airflow_common._dbt_entry``, a deferrable run adds a detached supervisor, and an adapter
may start helpers of its own. What they all share is where they run: every dbt process gets
``DBT_PROJECT_DIR`` (and its working directory) inside the runtime root of its run, and children
inherit both. A warm start's dbt is a fork of the warm server: its command line (and what
``/proc/PID/environ`` shows) are the server's, but its working directory is the run's. So a process
belongs to a runtime root by its dbt variables or its working directory, and so does every process
below one that does (an adapter's helper that moved elsewhere). Names do not count: only the detached
supervisor, which runs elsewhere, is matched by our module naming the root in its arguments or environment.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.pgserver import PgServer

_DBT_VARS = (b"DBT_PROJECT_DIR=", b"DBT_TARGET_PATH=", b"DBT_LOG_PATH=")
_MODULES = (b"dlh_airflow_common._dbt_entry", b"dlh_airflow_common.core.detached", b"dlh_airflow_common.core.warm")


def _read(pid: str, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _stat(pid: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _is_zombie(pid: str) -> bool:
    """An exited child its parent has not reaped yet: no longer running, environ reads empty."""
    return _stat(pid)[0] == "Z"


def _under(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def _belongs(pid: str, root: bytes) -> bool:
    """A process of ``root`` by itself: dbt's variables or its working directory point there.

    The detached supervisor runs elsewhere; it is ours when our module names the root in its arguments
    or environment (its control dir, ``DLH_DBT_RUNTIME_ROOT``).
    """
    environ = _read(pid, "environ").split(b"\0")
    if any(_under(e.split(b"=", 1)[1], root) for e in environ if e.startswith(_DBT_VARS)):
        return True  # every cold-started dbt process we start, and whatever it starts in turn
    try:
        if _under(os.readlink(f"/proc/{pid}/cwd").encode(), root):
            return True  # a warm-forked dbt: the server's command line and environ, the run's cwd
    except OSError:
        pass
    cmdline = _read(pid, "cmdline").split(b"\0")
    is_module = any(m in arg for arg in cmdline for m in _MODULES)
    return is_module and any(root in part for part in cmdline + environ)


def dbt_pids(runtime_root: str | os.PathLike[str]) -> list[int]:
    """Live dbt processes under the root (entry module, CLI, warm fork, supervisor) and all below them."""
    roots = {str(Path(runtime_root)).encode(), str(Path(runtime_root).resolve()).encode()}
    parents: dict[int, int] = {}
    found: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fields = _stat(pid)
            if fields[0] == "Z":
                continue
            parents[int(pid)] = int(fields[1])
            if any(_belongs(pid, root) for root in roots):
                found.add(int(pid))
        except (OSError, IndexError):
            continue  # exited while we looked
    for child in parents:  # descendants, whatever they are called and wherever they run
        seen: set[int] = set()
        up = parents.get(child)
        while up is not None and up not in seen and up > 1:
            if up in found:
                found.add(child)
                break
            seen.add(up)
            up = parents.get(up)
    return sorted(found)


def dbt_processes(runtime_root: str | os.PathLike[str]) -> list[str]:
    """``"PID command line"`` of each live dbt process under the root (see :func:`dbt_pids`)."""
    found = []
    for pid in dbt_pids(runtime_root):
        try:
            found.append(f"{pid} " + _read(str(pid), "cmdline").replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def parent_of(pid: int) -> int:
    return int(_stat(str(pid))[1])


def descendants(pid: int) -> set[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(entry)[1])
            except (OSError, IndexError):
                continue
    tree = {pid}
    grew = True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree}
        grew = not below <= tree
        tree |= below
    return tree


def no_dbt_processes(runtime_root: str | os.PathLike[str], within: float = 10.0) -> bool:
    """True once no dbt process of the root is left (a supervisor writes its status, then exits)."""
    deadline = time.monotonic() + within
    while dbt_processes(runtime_root) and time.monotonic() < deadline:
        time.sleep(0.2)
    return dbt_processes(runtime_root) == []


def group_pids(pgid: int) -> list[int]:
    """Live members of one process group (dbt's runner makes dbt the leader of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def pids_with_env(marker: str) -> list[int]:
    """Live processes (not zombies, whose environ reads empty) with exactly this variable set."""
    found = []
    needle = b"\0" + marker.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0":
            found.append(int(entry.name))
    return found


def start_until_sleeping(work: Callable[[], object], pg: PgServer, sleep: str = "pg_sleep(120)",
                         timeout: float = 60) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``work`` (a dbt run) in a thread until its ``sleep`` query shows in pg_stat_activity.

    Returns the thread and the list that receives what ``work`` raised, for the caller to cancel and check.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_sleep(pg, sleep, timeout)
    return thread, errors


def wait_for_sleep(pg: PgServer, sleep: str = "pg_sleep(120)", timeout: float = 60) -> None:
    """Wait until exactly one query with ``sleep`` in its text runs on the server (dbt is mid-model)."""
    pg.wait_until(f"select 1 from pg_stat_activity where query like '%{sleep}%' and pid <> pg_backend_pid()",
                  lambda rows: len(rows) == 1, timeout=timeout)
