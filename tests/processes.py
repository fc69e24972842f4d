"""Find the dbt processes a test started, by what they are, so "nothing left running" checks can fail.

A dbt child is not always a ``bin/dbt`` command line: the default runner starts
``python -m dlh_airflow_common._dbt_entry``, a deferrable run adds a detached supervisor, and an adapter
may start helpers of its own. What they all share is where they run: every dbt process gets
``DBT_PROJECT_DIR`` (and its working directory) inside the runtime root of its run, and children
inherit both. Matching on that, not on the command line, sees all of them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.pgserver import PgServer

# A warm start's dbt is a fork of the warm server: its command line is the server's, its cwd the run's.
_MODULES = (b"dlh_airflow_common._dbt_entry", b"dlh_airflow_common.core.detached", b"dlh_airflow_common.core.warm")
_DBT_VARS = (b"DBT_PROJECT_DIR=", b"DBT_TARGET_PATH=", b"DBT_LOG_PATH=")


def _read(pid: str, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _is_zombie(pid: str) -> bool:
    """An exited child its parent has not reaped yet: no longer running, environ reads empty."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _belongs(pid: str, root: bytes) -> bool:
    """A dbt process (or its child) of ``root``: dbt's variables, cwd or command line point there."""
    cmdline = _read(pid, "cmdline").split(b"\0")
    environ = _read(pid, "environ").split(b"\0")
    is_module = any(m in arg for arg in cmdline for m in _MODULES)
    is_cli = bool(cmdline and cmdline[0]) and os.path.basename(cmdline[0]) == b"dbt"
    dbt_vars = [e.split(b"=", 1)[1] for e in environ if e.startswith(_DBT_VARS)]
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").encode()
    except OSError:
        cwd = b""
    if any(v.startswith(root) for v in dbt_vars):
        return True  # every dbt process we start, and whatever it starts in turn
    if is_module or is_cli:
        return cwd.startswith(root) or any(root in part for part in cmdline + environ)
    return False


def dbt_processes(runtime_root: str | os.PathLike[str]) -> list[str]:
    """Live dbt processes (entry module, CLI, detached supervisor, their children) under the root."""
    roots = {str(Path(runtime_root)).encode(), str(Path(runtime_root).resolve()).encode()}
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if not _is_zombie(pid) and any(_belongs(pid, root) for root in roots):
                cmdline = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{pid} {cmdline}")
        except (OSError, IndexError):
            continue  # exited while we looked
    return found


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
