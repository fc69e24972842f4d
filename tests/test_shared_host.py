"""Issue "Safe on a shared host": another user of the host or volume cannot turn the runtime root against us.

Each test plays one attack of that issue with a second uid (we run as root in CI: ``chown`` to a uid
that is not ours stands for "another user made this"). Each fails on the code before the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlh_airflow_common.core import ConnectionInfo, DbtCommand, ProfileConfig, RunIdentity, resolve_profile
from dlh_airflow_common.core.detached import ControlDir
from dlh_airflow_common.core.duckdb_lock import duckdb_writer
from dlh_airflow_common.core.exceptions import DbtRuntimeRootException
from dlh_airflow_common.core.retention import Retention, prune
from dlh_airflow_common.core.runtime import DbtRuntime
from dlh_airflow_common.core.stream import ControlDirChannel, StreamState, current_launch, stream_dir
from dlh_airflow_common.operators.deferral import DetachedRun
from dlh_airflow_common.operators.retry_state import RetryState
from tests.conftest import CANARY
from tests.processes import no_dbt_processes
from tests.test_detached import _final

OTHER_UID = 12345  # "the attacker": any uid that is not ours
HOUR = 3600.0

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="plays a second user with chown: needs root")


def _victim(tmp_path: Path) -> Path:
    """A file and a dir of the Airflow user's that an attacker wants emptied or removed."""
    victim = tmp_path / "victim"
    (victim / "a" / "b").mkdir(parents=True)
    (victim / "a" / "b" / "keep.txt").write_text("precious")
    (victim / "secret.txt").write_text("precious")
    return victim


def _old(path: Path, hours: float = 1000) -> None:
    when = time.time() - hours * HOUR
    for entry in [*path.rglob("*"), path]:
        os.utime(entry, (when, when), follow_symlinks=False)


# -- 1. the runtime root is ours or refused ---------------------------------------------------------
def test_a_root_another_user_created_first_is_refused(demo_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "dbt"
    (root / "projects").mkdir(parents=True)
    os.chown(root, OTHER_UID, OTHER_UID)
    with pytest.raises(DbtRuntimeRootException) as raised:
        DbtRuntime.create(demo_project, runtime_root=root)
    assert f"owned by uid {OTHER_UID}" in str(raised.value) and "DLH_DBT_RUNTIME_ROOT" in str(raised.value)

    # Ours, but others may write into it: someone could plant dbt_packages for our runs.
    os.chown(root, 0, 0)
    os.chmod(root, 0o777)
    with pytest.raises(DbtRuntimeRootException, match="writable by others"):
        DbtRuntime.create(demo_project, runtime_root=root)

    # A dir inside planted by another user while the root was open.
    os.chmod(root, 0o700)
    os.chown(root / "projects", OTHER_UID, OTHER_UID)
    with pytest.raises(DbtRuntimeRootException, match=f"projects is owned by uid {OTHER_UID}"):
        DbtRuntime.create(demo_project, runtime_root=root)

    # A symlink where our dir should be (planted by another user, pointing at their packages).
    os.chown(root / "projects", 0, 0)
    planted = tmp_path / "planted"
    planted.mkdir()
    run = DbtRuntime.create(demo_project, runtime_root=root)
    cache = run.cache.root
    run.cleanup()
    shutil.rmtree(cache)
    cache.symlink_to(planted)
    with pytest.raises(DbtRuntimeRootException, match="symlink"):
        DbtRuntime.create(demo_project, runtime_root=root)


def test_the_root_and_what_a_run_creates_in_it_are_private(demo_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "dbt"
    run = DbtRuntime.create(demo_project, runtime_root=root, identity=RunIdentity("d", "t", 1))
    try:
        for path in (root, root / "runs", root / "projects", run.cache.root, run.run_dir, run.target_dir):
            st = path.lstat()
            assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0, (path, oct(st.st_mode))
        active = run.run_dir / ".dlh_active"
        assert active.stat().st_mode & 0o077 == 0
    finally:
        run.cleanup()


def test_group_shared_root_is_allowed_only_when_declared(demo_project: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o770)
    with pytest.raises(DbtRuntimeRootException, match="writable by its group"):
        DbtRuntime.create(demo_project, runtime_root=root)
    monkeypatch.setenv("DLH_DBT_RUNTIME_ROOT_GROUP", "true")
    run = DbtRuntime.create(demo_project, runtime_root=root)
    assert run.run_dir.stat().st_mode & 0o7777 == 0o2770
    run.cleanup()


def test_a_symlinked_lock_file_never_empties_its_target(tmp_path: Path) -> None:
    victim = _victim(tmp_path) / "secret.txt"
    db = tmp_path / "data" / "warehouse.duckdb"
    db.parent.mkdir()
    lock = db.with_name(db.name + ".dlh-lock")
    lock.symlink_to(victim)
    said: list[str] = []
    with pytest.raises(DbtRuntimeRootException, match="symlink"), duckdb_writer(
            db, run_name="r", runtime_root=tmp_path / "root", wait=1, say=said.append):
        pass
    assert victim.read_text() == "precious"

    lock.unlink()
    os.link(victim, lock)  # a hard link: O_NOFOLLOW alone would not see it
    with pytest.raises(DbtRuntimeRootException, match="hard links"), duckdb_writer(
            db, run_name="r", runtime_root=tmp_path / "root", wait=1, say=said.append):
        pass
    assert victim.read_text() == "precious"

    lock.unlink()  # and the lock still works for a file of ours
    with duckdb_writer(db, run_name="r", runtime_root=tmp_path / "root", wait=1, say=said.append):
        assert '"run": "r"' in lock.read_text()


# -- 2. deleting never leaves the root ---------------------------------------------------------------
@pytest.mark.parametrize("planted", ["streams/evil", "retry_state/evil", "runs/evil", "state/evil"])
def test_retention_never_follows_a_symlink_out_of_the_root(planted: str, demo_project: Path,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "root"
    DbtRuntime.create(demo_project, runtime_root=root).cleanup()  # a real root of ours
    victim = _victim(tmp_path)
    (victim / "runs" / "b").mkdir(parents=True)  # what state/*/runs/* would match through a link
    _old(victim)
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    removed = prune(root, Retention(max_age=HOUR, keep=0, min_age=0))
    assert (victim / "a" / "b" / "keep.txt").read_text() == "precious"
    assert (victim / "runs" / "b").is_dir()
    assert all(root in p.parents for p in removed)


def test_ids_with_dots_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "run_results.json").write_text("{}")
    state = RetryState.for_task(root, SimpleNamespace(dag_id="..", task_id="..", run_id="..", try_number=1))
    assert root in state.path.resolve().parents
    state.save(artifacts)
    assert (state.path / "run_results.json").is_file()
    assert not (tmp_path / "deep" / "run_results.json").exists()
    state.clear()
    assert not state.path.exists() and root.is_dir()
    assert root in stream_dir(root, "..", "..").resolve().parents


def test_different_ids_never_share_a_dir(tmp_path: Path) -> None:
    assert stream_dir(tmp_path, "sales.daily", "r") != stream_dir(tmp_path, "sales_daily", "r")
    assert stream_dir(tmp_path, "d", "a:b") != stream_dir(tmp_path, "d", "a_b")
    ti = SimpleNamespace(dag_id="sales.daily", task_id="t", run_id="r", try_number=1)
    other = SimpleNamespace(dag_id="sales_daily", task_id="t", run_id="r", try_number=1)
    assert RetryState.for_task(tmp_path, ti).path != RetryState.for_task(tmp_path, other).path


# -- 3. one run, one control dir ---------------------------------------------------------------------
def _producer(project: Path, conn: ConnectionInfo, root: Path, try_number: int, slow: int) -> ControlDir:
    profile = resolve_profile(ProfileConfig(connection=conn), project)
    return DetachedRun(project_dir=str(project), runtime_root=root,
                       command=DbtCommand("build", select="+slow_model", vars={"slow_seconds": slow},
                                          exclude="test_type:data"),
                       identity=RunIdentity("dag", "producer", try_number), profile=profile, env_vars={},
                       cancel_grace=5, stream_to=stream_dir(root, "dag", "run")).launch()


def test_a_retry_racing_a_stale_supervisor_keeps_its_own_status(demo_project: Path, pg_conn: ConnectionInfo,
                                                                 runtime_root: Path) -> None:
    from dlh_airflow_common.core import DbtInvoker

    DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root).invoke(
        DbtCommand("deps"))
    first = _producer(demo_project, pg_conn, runtime_root, 1, slow=60)
    deadline = time.monotonic() + 120
    while "slow_model" not in " ".join((first.read_status() or {}).get("nodes", {}).get("running", [])):
        assert time.monotonic() < deadline, first.progress_tail()
        time.sleep(0.2)
    second = _producer(demo_project, pg_conn, runtime_root, 2, slow=1)  # the retry, while try 1 runs
    assert second.path != first.path
    stream = stream_dir(runtime_root, "dag", "run")
    assert current_launch(stream) == second.path
    channel, seen = ControlDirChannel(stream), StreamState()
    status = _final(second, 180)
    assert status["state"] == "success", second.progress_tail()
    channel.poll(seen)
    assert seen.status is not None and seen.status["state"] == "success"
    assert seen.status["pid"] == status["pid"]
    # The stale supervisor was told to stop, stopped dbt and removed only its own dir.
    deadline = time.monotonic() + 60
    while first.path.exists():
        assert time.monotonic() < deadline, "the stale supervisor did not clean up"
        time.sleep(0.2)
    assert (second.read_status() or {})["state"] == "success"
    assert no_dbt_processes(runtime_root, within=30)


# -- 6. secrets stay out of streamed messages ---------------------------------------------------------
_ECHOING_DBT = """#!{python}
import json, os
secret = next(v for k, v in os.environ.items() if k.startswith("DBT_ENV_SECRET_"))
node = {{"unique_id": "model.demo_project.leaky", "node_status": "error", "node_path": "leaky.sql"}}
for name, extra in (("NodeStart", {{}}), ("NodeFinished", {{"run_result": {{
        "status": "error", "message": f"password authentication failed: {{secret}}"}}}})):
    print(json.dumps({{"info": {{"name": name, "level": "info", "msg": name}},
                      "data": {{"node_info": node, **extra}}}}), flush=True)
raise SystemExit(1)
"""


def test_node_messages_of_a_streamed_run_are_redacted(demo_project: Path, runtime_root: Path,
                                                      tmp_path: Path) -> None:
    """A dbt (here: one that does not scrub its messages) echoing the password in a node's message:
    nodes.jsonl, the status file and the progress log get it redacted."""
    fake = tmp_path / "echoing-dbt"
    fake.write_text(_ECHOING_DBT.format(python=sys.executable))
    fake.chmod(0o755)
    conn = ConnectionInfo("pg_wh", "postgres", host="127.0.0.1", port=5432, login="u", password=CANARY,
                          schema="warehouse", extra={"schema": "s"})
    profile = resolve_profile(ProfileConfig(connection=conn), demo_project)
    ctl = DetachedRun(project_dir=str(demo_project), runtime_root=runtime_root, command=DbtCommand("run"),
                      identity=RunIdentity("dag", "producer", 1), profile=profile, env_vars={},
                      dbt_executable=str(fake), stream_to=stream_dir(runtime_root, "dag", "run")).launch()
    status = _final(ctl, 120)
    assert status["state"] == "failed", ctl.progress_tail()
    (row,) = [json.loads(line) for line in (ctl.path / "nodes.jsonl").read_text().splitlines()]
    assert row["message"] == "password authentication failed: *****", row  # there, and redacted
    for name in ("nodes.jsonl", "status.json", "progress.log"):
        assert CANARY not in (ctl.path / name).read_text(), name
