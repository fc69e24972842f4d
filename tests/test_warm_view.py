"""A warm server serves only clients that see what it sees (issue 24, point 2), checked per request.

The key of a server names the namespaces of the process that computed it; these tests give both sides
the same key on purpose (as a key cached before a namespace change, or a reused namespace id, would)
so that only the per-request check stands between a client and a server in another mount namespace.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig, warm
from tests.conftest import EXAMPLES, REPO
from tests.warm_helpers import warm_server

KEY = "view"

# Runs in a private mount namespace: the project dir is a read-only bind mount of another copy, and
# the runtime root is on a tmpfs nobody outside sees.
SCRIPT = textwrap.dedent(
    """
    import json, logging, os, subprocess, sys, time
    from pathlib import Path
    repo, src, hidden, nsonly, warm_in, warm_out, db, ready, done, report = map(Path, sys.argv[1:11])
    sys.path.insert(0, str(repo))
    subprocess.run(["mount", "--bind", str(src), str(hidden)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(hidden)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(nsonly)], check=True)
    from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig, warm
    from tests.warm_helpers import warm_server
    warm._key = lambda: "view"
    said, starts = [], []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    logging.getLogger(warm.__name__).addHandler(Keep())
    logging.getLogger(warm.__name__).setLevel(logging.WARNING)
    real_start = warm.start

    def start(*args):
        proc = real_start(*args)
        starts.append(proc is not None)
        return proc

    warm.start = start

    def run(home):
        os.environ["DLH_DBT_WARM_DIR"] = str(home)
        said.clear()
        starts.clear()
        inv = DbtInvoker(hidden / "demo_project", ProfileConfig(connection=ConnectionInfo("duck", "duckdb", host=str(db))),
                         runtime_root=nsonly / "runtime")
        try:
            ok, error = inv.invoke(DbtCommand("deps")).success, None
        except Exception as exc:
            ok, error = False, str(exc)[-3000:]
        return {"ok": ok, "error": error, "warm": list(starts), "said": list(said)}

    out = {"writable": os.access(hidden / "demo_project", os.W_OK)}
    out["outside_server"] = run(warm_out)
    with warm_server(warm_in, "view"):
        out["own_server"] = run(warm_in)
        ready.write_text("ready")
        deadline = time.monotonic() + 300
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    report.write_text(json.dumps(out))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (and root)")
def test_a_server_in_another_mount_namespace_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A server inside ``unshare -m`` (read-only bind mount) serves no client outside, and a server
    outside serves no client inside: each run succeeds cold, with one log line saying why. A client on
    the server's own side is served warm, so the test can tell the two apart."""
    src, hidden, nsonly = tmp_path / "src", tmp_path / "hidden", tmp_path / "nsonly"
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, src / name)  # what the namespace sees at ``hidden`` (read-only)
        shutil.copytree(EXAMPLES / name, hidden / name)  # what everyone else sees there
    nsonly.mkdir()
    warm_in, warm_out = tmp_path / "warm-in", tmp_path / "warm-out"
    ready, done, report, script = (tmp_path / n for n in ("ready", "done", "report.json", "script.py"))
    script.write_text(SCRIPT)
    monkeypatch.setattr(warm, "_key", lambda: KEY)
    monkeypatch.delenv(warm.WARM_ENV, raising=False)
    starts: list[bool] = []
    real_start = warm.start

    def start(*args: Any) -> warm.WarmProcess | None:
        proc = real_start(*args)
        starts.append(proc is not None)
        return proc

    monkeypatch.setattr(warm, "start", start)
    caplog.set_level(logging.WARNING, logger=warm.__name__)

    def run(home: Path) -> tuple[bool, list[bool], list[str]]:
        monkeypatch.setenv(warm.WARM_DIR_ENV, str(home))
        starts.clear()
        caplog.clear()
        inv = DbtInvoker(hidden / "demo_project",
                         ProfileConfig(connection=ConnectionInfo("duck", "duckdb", host=str(tmp_path / "out.duckdb"))),
                         runtime_root=hidden / "runtime")  # not there for the namespace
        ok = inv.invoke(DbtCommand("deps")).success
        return ok, list(starts), [r.getMessage() for r in caplog.records if r.name == warm.__name__]

    with warm_server(warm_out, KEY):
        assert run(warm_out) == (True, [True], []), "a client beside the server is not served warm"
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, str(script), str(REPO), str(src),
             str(hidden), str(nsonly), str(warm_in), str(warm_out), str(tmp_path / "in.duckdb"), str(ready),
             str(done), str(report)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.exists(), f"the namespace's server never got ready: {proc.poll()}"
            ok, used, said = run(warm_in)
        finally:
            done.write_text("done")
            out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    inside = json.loads(report.read_text())
    assert inside["writable"] is False, "the bind mount is not read-only: the test would prove less"
    assert inside["own_server"] == {"ok": True, "error": None, "warm": [True], "said": []}, inside
    for where, (ok, used, said) in {"outside": (ok, used, said), "inside": (
            inside["outside_server"]["ok"], inside["outside_server"]["warm"], inside["outside_server"]["said"])}.items():
        detail = inside["outside_server"]["error"] if where == "inside" else ""
        assert ok, f"the client {where} failed: {detail}"
        assert used == [False], f"the client {where} was served by a server in another mount namespace"
        assert len(said) == 1 and "Starting dbt cold" in said[0] and "mnt namespace" in said[0], said
