"""The leftover-process helper must see a real dbt run, or every "nothing left" check is blind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCancelledException,
    DbtCommand,
    DbtInvoker,
    ProfileConfig,
    SubprocessRunner,
)
from tests.pgserver import PgServer
from tests.processes import dbt_processes, group_pids, no_dbt_processes, start_until_sleeping
from tests.warmth import DbtStart


def test_helper_sees_a_running_dbt_and_then_none(dbt_start: DbtStart, demo_project: Path,
                                                   pg_conn: ConnectionInfo, runtime_root: Path,
                                                   pg: PgServer) -> None:
    """Cold, dbt is the entry module's command line; warm, a fork whose command line is the server's."""
    runner = SubprocessRunner(cancel_grace=20)
    inv = DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root,
                     runner=runner)
    assert dbt_processes(runtime_root) == []

    def deps() -> None:
        DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root).invoke(
            DbtCommand("deps"))

    deps()
    dbt_start.prime(deps, times=1)
    thread, errors = start_until_sleeping(lambda: inv.invoke(DbtCommand(
        "build", select="+slow_model", vars={"slow_seconds": 120}, exclude="test_type:data")), pg)
    pid = runner.pid
    assert pid is not None and group_pids(pid)
    dbt_start.assert_started(pid)
    seen = dbt_processes(runtime_root)
    program = "dlh_airflow_common._dbt_entry" if dbt_start.mode == "cold" else "dlh_airflow_common.core.warm"
    # neither is a bin/dbt command line, and the helper still sees it
    assert any(s.startswith(f"{pid} ") and program in s for s in seen), seen
    assert dbt_processes(runtime_root.parent / "another-root") == []  # other runs are not ours
    inv.cancel()
    thread.join(60)
    assert isinstance(errors[0], DbtCancelledException)
    assert no_dbt_processes(runtime_root)


def test_warm_start_forks_dbt_from_a_server_and_cancels_it(demo_project: Path, pg_conn: ConnectionInfo,
                                                          runtime_root: Path, pg: PgServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The second cold start on a host starts the warm server; later dbt processes are its forks."""
    home = tmp_path / "warm"
    monkeypatch.setenv("DLH_DBT_WARM_DIR", str(home))
    monkeypatch.delenv("DLH_DBT_WARM_START", raising=False)
    runner = SubprocessRunner(cancel_grace=20)
    inv = DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root, runner=runner)
    inv.invoke(DbtCommand("deps"))
    assert not list(home.glob("*.sock"))  # one start on this host: no server
    inv.invoke(DbtCommand("deps"))  # a second, soon after: a server starts for the next ones
    deadline = time.monotonic() + 60
    while not list(home.glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(home.glob("*.sock")), [(p.name, p.read_text() if p.suffix == ".log" else "") for p in home.iterdir()]
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    result = inv.invoke(DbtCommand("build", select="+stg_customers", exclude="test_type:data"))
    assert result.success and result.summary.counts.get("success") == 2, result.summary  # seed + model
    (modules,) = home.glob("*.modules")  # what that fork imported, for the server to import once
    assert oct(modules.stat().st_mode & 0o777) == "0o600" and "dbt.task.build" in modules.read_text()
    thread, errors = start_until_sleeping(lambda: inv.invoke(DbtCommand(
        "build", select="+slow_model", vars={"slow_seconds": 120}, exclude="test_type:data")), pg)
    (server_log,) = home.glob("*.log")
    assert "warm-up: parsed with duckdb, postgres" in server_log.read_text()
    assert "preloaded" in server_log.read_text()  # before forking the slow build
    pid = runner.pid
    assert pid is not None
    server = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "dlh_airflow_common.core.warm" in cmdline, cmdline  # a fork of the server, not a new Python
    assert os.getsid(pid) == pid  # its own session: cancellation signals its group only
    assert any(s.startswith(f"{pid} ") for s in dbt_processes(runtime_root))
    inv.cancel()
    thread.join(60)
    assert isinstance(errors[0], DbtCancelledException), errors
    assert no_dbt_processes(runtime_root)
    assert pg.execute("select count(*) from pg_stat_activity where query like '%pg_sleep%' "
                      "and pid <> pg_backend_pid()") == [(0,)]
    # A server killed outright leaves its socket: the next start is cold, clears it and starts a new one.
    (sock,) = home.glob("*.sock")
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sock.exists()
    inv.invoke(DbtCommand("deps"))
    deadline = time.monotonic() + 60
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), "no new server after a stale socket"
    (log,) = home.glob("*.log")
    servers = [int(line.split()[3]) for line in log.read_text().splitlines() if " listening on " in line]
    assert len(servers) == 2 and servers[0] == server and alive(servers[1]), servers


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_warm_server_is_not_shared_across_mount_namespaces() -> None:
    """A fork sees its server's mounts: a client in another mount namespace must get its own server."""
    probe = [sys.executable, "-c", "from dlh_airflow_common.core.warm import _key; print(_key())"]
    here = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    again = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    other = subprocess.run(["unshare", "-m", *probe], capture_output=True, text=True, check=True).stdout.strip()
    assert here == again  # the same view of the host: the same server
    assert other and other != here


def test_warm_server_preloads_installed_modules_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module a dbt child imported is imported by the server only when it is installed with Python."""
    from dlh_airflow_common.core.warmup import Preloader, record_imports

    project_code = tmp_path / "project_code"
    project_code.mkdir()
    (project_code / "dlh_probe_user_module.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(project_code))
    for name in ("dlh_probe_user_module", "wave"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = list(sys.modules)
    import wave  # noqa: F401  (stdlib: installed)

    import dlh_probe_user_module  # type: ignore[import-not-found]  # noqa: F401  (a project's own code)

    record_imports(tmp_path, "k", before)
    for name in ("dlh_probe_user_module", "wave"):
        del sys.modules[name]
    loaded = Preloader(tmp_path, "k").preload()
    assert "wave" in loaded and "wave" in sys.modules
    assert "dlh_probe_user_module" not in loaded and "dlh_probe_user_module" not in sys.modules


def test_warm_starts_stop_when_the_server_is_not_fork_safe(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A server with a second (e.g. native) thread must not fork: the version falls back to cold starts."""
    import threading

    from dlh_airflow_common.core import warm, warmup

    monkeypatch.setenv("DLH_DBT_WARM_DIR", str(tmp_path))
    said: list[str] = []
    with monkeypatch.context() as single:  # pytest's process may have threads of earlier tests
        single.setattr(warmup, "os_threads", lambda: 1)
        assert warm._fork_safe(tmp_path, "k", said.append, "now") and not said
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not warm._fork_safe(tmp_path, "k", said.append, "after importing x")
    finally:
        stop.set()
        thread.join()
    assert " threads after importing x: forking would copy locks" in said[0]  # the real count, >= 2
    monkeypatch.setattr(warm, "_key", lambda: "k")
    (tmp_path / "k.sock").touch()  # even with a socket there, no connect is tried
    assert warm.start(["--version"], {}, None) is None
