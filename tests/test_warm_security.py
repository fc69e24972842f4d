"""The warm dbt server cannot hurt a run (issue 19, point 5): attacks on a real server and its forks.

Each test starts a server of its own (private dir, fixed key patched into the client) and checks from
outside, through /proc, what a fork holds, what the server's memory holds, who may connect, and what a
task gets when the server dies under it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCommand,
    DbtInvoker,
    DbtTaskResult,
    ProfileConfig,
    SubprocessRunner,
    warm,
)
from dlh_airflow_common.core.classify import Evidence, classify
from dlh_airflow_common.core.exceptions import DbtRuntimeException
from tests.pgserver import PgServer
from tests.processes import start_until_sleeping, wait_for_sleep
from tests.warm_helpers import (
    children_of,
    fd_targets,
    kill,
    memory_contains,
    parent_of,
    server_log,
    warm_server,
)

KEY = "warmsec"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's private warm dir; the client asks for this test's server only."""
    path = tmp_path / "warm"
    monkeypatch.setenv(warm.WARM_DIR_ENV, str(path))
    monkeypatch.delenv(warm.WARM_ENV, raising=False)
    monkeypatch.setattr(warm, "_key", lambda: KEY)
    return path


def _invoker(project: Path, conn: ConnectionInfo, root: Path) -> tuple[DbtInvoker, SubprocessRunner]:
    runner = SubprocessRunner(cancel_grace=20)
    return DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=root, runner=runner), runner


def _other_schema(conn: ConnectionInfo, suffix: str) -> ConnectionInfo:
    """The same warehouse, another schema: two concurrent builds of one model must not collide."""
    return dataclasses.replace(conn, extra={**conn.extra, "schema": f"{conn.extra['schema']}_{suffix}"[:60]})


def _in_thread(work: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())  # type: ignore[operator]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_task_gets_its_real_exit_code_when_the_server_dies(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer, home: Path) -> None:
    """SIGKILL the server while a short dbt runs and a longer one, forked after it, still runs: the short
    task gets rc 0 when its dbt ends, not when the other fork ends, and not rc -1."""
    short, short_runner = _invoker(demo_project, pg_conn, runtime_root)
    long, long_runner = _invoker(demo_project, _other_schema(pg_conn, "long"), runtime_root)
    with warm_server(home, KEY) as server:
        short.invoke(DbtCommand("deps"))
        short_thread, short_out = _in_thread(lambda: short.invoke(DbtCommand(
            "build", select="slow_model", vars={"slow_seconds": 8})))
        wait_for_sleep(pg, "pg_sleep(8)")
        long_thread, long_out = start_until_sleeping(lambda: long.invoke(DbtCommand(
            "build", select="slow_model", vars={"slow_seconds": 120})), pg)
        try:
            for runner in (short_runner, long_runner):
                assert runner.pid is not None and parent_of(runner.pid) == server, "not a warm start"
            kill(server)
            killed_at = time.monotonic()
            short_thread.join(30)
            waited = time.monotonic() - killed_at
            assert not short_thread.is_alive(), (
                f"the short task still waits {waited:.0f}s after the server died (for the other fork?)")
            (result,) = short_out
            assert isinstance(result, DbtTaskResult) and result.success and result.return_code == 0, result
            assert waited < 20, f"the short task ended {waited:.1f}s after the server died; its dbt sleeps 8s"
        finally:
            long.cancel()
            long_thread.join(60)
    assert long_out and not isinstance(long_out[0], DbtTaskResult), "the long build was not cancelled"


def test_a_fork_holds_no_descriptor_of_the_server(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer, home: Path) -> None:
    """A forked dbt has 0, 1, 2, its own connection and what dbt opens: none of the server's lock,
    listener, wake-up pipe or other tasks' connections (multiprocessing's tracker pipe is shared by design)."""
    first, first_runner = _invoker(demo_project, pg_conn, runtime_root)
    second, second_runner = _invoker(demo_project, _other_schema(pg_conn, "second"), runtime_root)
    with warm_server(home, KEY) as server:
        first.invoke(DbtCommand("deps"))
        threads = [start_until_sleeping(lambda: first.invoke(DbtCommand(
            "build", select="slow_model", vars={"slow_seconds": 120})), pg)]
        try:
            threads.append(start_until_sleeping(lambda: second.invoke(DbtCommand(
                "build", select="slow_model", vars={"slow_seconds": 121})), pg, sleep="pg_sleep(121)"))
            server_fds = set(fd_targets(server).values())
            lock = str(home / f"{KEY}.lock")
            assert lock in server_fds, server_fds  # what the check looks for is there to be seen
            assert sum(t.startswith("socket:") for t in server_fds) >= 3  # listener and both tasks
            tracker = [set(fd_targets(pid).values()) for pid in children_of(server)
                       if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            shared_by_design = set().union(*tracker) | {"/dev/null"}
            conns = []
            for runner in (first_runner, second_runner):
                assert runner.pid is not None and parent_of(runner.pid) == server, "not a warm start"
                fds = fd_targets(runner.pid)
                assert lock not in fds.values(), f"fork {runner.pid} holds the server's lock: {fds}"
                # The server keeps each fork's connection (to report a signal): that one socket is shared.
                shared = {t for t in fds.values() if t in server_fds - shared_by_design}
                sockets = {t for t in shared if t.startswith("socket:")}
                assert shared == sockets and len(sockets) == 1, \
                    f"fork {runner.pid} holds the server's {shared - sockets or sockets} (all: {fds})"
                conns.append(sockets)
            assert conns[0] != conns[1], f"the second fork holds the first task's connection {conns[0]}"
        finally:
            for inv in (first, second):
                inv.cancel()
            for thread, _ in threads:
                thread.join(60)


ATTACK = textwrap.dedent(
    """
    import array, json, os, socket, sys
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(sys.argv[1])
    read_fd, write_fd = os.pipe()
    request = json.dumps({"argv": ["--version"], "env": {"PATH": os.environ["PATH"]}, "cwd": None,
                          "view": json.loads(sys.argv[2])}).encode()
    reply = b""
    try:
        conn.sendmsg([len(request).to_bytes(8, "big") + request],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))])
        while not reply.endswith(b"\\n"):
            chunk = conn.recv(1)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        reply = repr(exc).encode()
    print(json.dumps({"uid": os.getuid(), "reply": reply.decode()}))
    """
)


def _forked(reply: object) -> bool:
    """The server answered with a fork's pid (``pid N``; before issue 19 a bare number)."""
    return re.fullmatch(r"(pid )?\d+\n", str(reply)) is not None


@pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0, reason="needs root and setpriv")
def test_another_user_cannot_use_the_server() -> None:
    """Even with the dir and socket opened up to everyone, a process of another uid gets no fork."""
    view = json.dumps(warm._view({}, None))
    top = Path(tempfile.mkdtemp(prefix="dlh-warm-uid-"))  # not under pytest's 0700 dir: reachable by uid 12345
    try:
        home = top / "warm"
        with warm_server(home, KEY):
            sock = home / f"{KEY}.sock"
            for path, mode in ((top, 0o711), (home, 0o711), (sock, 0o777)):
                os.chmod(path, mode)  # a misconfigured dir: the server's own check is the only barrier left

            def attack(*prefix: str) -> dict[str, object]:
                proc = subprocess.run([*prefix, sys.executable, "-c", ATTACK, str(sock), view],
                                      capture_output=True, text=True, timeout=60)
                assert proc.returncode == 0, proc.stderr
                out: dict[str, object] = json.loads(proc.stdout)
                return out

            ours = attack()  # the same request from the server's own user is served: the attack can succeed
            assert _forked(ours["reply"]), (ours, server_log(sock))
            other = attack("setpriv", "--reuid=12345", "--regid=12345", "--clear-groups")
            assert other["uid"] == 12345
            assert not _forked(other["reply"]), f"uid 12345 got a dbt fork: {other}"
            assert "refused a connection from uid 12345" in server_log(sock)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_no_secret_stays_in_the_server_or_reaches_a_later_fork(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer, home: Path) -> None:
    """A request's secret is in its own fork only: not in the server's memory afterwards, not in a later
    fork's (which copies the server's memory). The scan first finds it where it is, so it can fail."""
    canary = f"Canary-Warm-{uuid.uuid4().hex}"
    role = f"warm_{uuid.uuid4().hex[:8]}"
    pg.execute(f"create role {role} login password '{canary}'")
    pg.execute(f"grant create, connect on database warehouse to {role}")
    first_conn = dataclasses.replace(_other_schema(pg_conn, "canary"), login=role, password=canary)
    first, first_runner = _invoker(demo_project, first_conn, runtime_root)
    later, later_runner = _invoker(demo_project, pg_conn, runtime_root)
    needle = canary.encode()
    with warm_server(home, KEY) as server:
        first.invoke(DbtCommand("deps"))
        thread, out = _in_thread(lambda: first.invoke(DbtCommand(
            "build", select="slow_model", vars={"slow_seconds": 4})))
        wait_for_sleep(pg, "pg_sleep(4)")
        pid = first_runner.pid
        assert pid is not None and parent_of(pid) == server, "not a warm start"
        # The serving fork has it (its environment: /proc/<pid>/environ shows the server's exec-time
        # block, not what the fork set), and the scan sees it there.
        assert memory_contains(pid, needle), "the scan cannot see the secret even where it must be"
        thread.join(60)
        assert out and isinstance(out[0], DbtTaskResult) and out[0].success, out
        assert not memory_contains(server, needle), "the server's memory holds an earlier request's secret"
        thread, _ = start_until_sleeping(lambda: later.invoke(DbtCommand(
            "build", select="slow_model", vars={"slow_seconds": 120})), pg)
        try:
            pid = later_runner.pid
            assert pid is not None and parent_of(pid) == server, "not a warm start"
            assert not memory_contains(pid, needle), "a later fork holds an earlier request's secret"
            assert not memory_contains(server, needle)
        finally:
            later.cancel()
            thread.join(60)


def test_a_fork_killed_while_its_server_is_gone_is_reported_as_killed(caplog: pytest.LogCaptureFixture) -> None:
    """No exit line and a closed connection: the client reports SIGKILL's code with a warning, and the
    runner's failure headline names the signal instead of dbt's last line."""
    from dlh_airflow_common.core.runners import killed_event

    for sent, expected in ((b"exit 0\n", 0), (b"exit 1\n", 1), (b"exit -15\n", -15), (b"", warm.KILLED)):
        ours, theirs = socket.socketpair()
        theirs.sendall(sent)
        theirs.close()
        caplog.clear()
        proc = warm.WarmProcess(ours, 4242, io.StringIO())
        assert proc.wait(5) == expected
        assert bool(caplog.records) == (sent == b""), caplog.text
    assert "killed by a signal" in caplog.text
    event = killed_event(4242, warm.KILLED)
    assert event["data"]["message"].startswith("dbt (pid 4242) was killed by SIGKILL")
    assert classify(Evidence(exception_classes=event["data"]["classes"],
                             exception_message=event["data"]["message"])) is DbtRuntimeException
