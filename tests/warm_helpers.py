"""A warm dbt server of a test's own (private dir, fixed key) and ways to look inside its processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlh_airflow_common.core import warm


@contextmanager
def warm_server(home: Path, key: str, timeout: float = 120.0) -> Iterator[int]:
    """Start ``serve(home, key)`` as ``_maybe_spawn`` would; yield its pid once it listens; kill it after.

    Tests pass the same key to the client (``warm._key``), so no server another test left behind is used.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_ENV_SECRET_")}
    env[warm.WARM_DIR_ENV] = str(home)
    with open(home / f"{key}.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", warm._SERVER_MAIN, str(home), key], cwd="/", env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_listening(home / f"{key}.sock", proc, timeout)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_listening(sock: Path, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the warm server exited ({proc.returncode}): {server_log(sock)}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(sock))
            return
        except OSError:
            time.sleep(0.2)
        finally:
            probe.close()
    raise AssertionError(f"no warm server listening on {sock} after {timeout:.0f}s: {server_log(sock)}")


def server_log(sock: Path) -> str:
    try:
        return sock.with_suffix(".log").read_text()[-3000:]
    except OSError:
        return "(no log)"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def fd_targets(pid: int) -> dict[int, str]:
    """Each open descriptor of ``pid`` and what it points at (a path, ``socket:[inode]``, ``pipe:[inode]``)."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return found


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def memory_contains(pid: int, needle: bytes) -> bool:
    """True when any writable mapping of ``pid`` (heap, stacks, data: where freed strings stay) holds ``needle``."""
    chunk = 64 << 20
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            at = start
            while at < end:
                try:
                    mem.seek(at)
                    data = mem.read(min(chunk + len(needle), end - at))
                except (OSError, ValueError, OverflowError):
                    break
                if needle in data:
                    return True
                at += chunk
    return False


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
