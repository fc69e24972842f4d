"""The detached supervisor of deferrable runs, run for real: it never imports Airflow."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCommand,
    DbtInvoker,
    ProfileConfig,
    RunIdentity,
    resolve_profile,
)
from dlh_airflow_common.core.detached import TERMINAL, ControlDir
from dlh_airflow_common.core.exceptions import DbtException, DbtProjectException, exception_from_dict
from dlh_airflow_common.operators.deferral import DetachedRun
from tests.pgserver import PgServer
from tests.processes import dbt_processes, no_dbt_processes

# Dumps the modules a Python process ended with, to $DLH_TEST_MODULES_OUT.<pid>.
_SITECUSTOMIZE = '''
import atexit, os, sys

def _dump():
    with open(os.environ["DLH_TEST_MODULES_OUT"] + "." + str(os.getpid()), "w") as fh:
        fh.write("\\n".join(sorted(sys.modules)))

if os.environ.get("DLH_TEST_MODULES_OUT"):
    atexit.register(_dump)
'''


def _airflow_modules(dump: Path) -> list[str]:
    return [m for m in dump.read_text().splitlines() if m == "airflow" or m.startswith("airflow.")]


def test_supervisor_runs_dbt_without_importing_airflow(demo_project: Path, runtime_root: Path,
                                                       duck: ConnectionInfo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    out = tmp_path / "modules"
    # What an Airflow 3 task process hands down: a metadata-DB URL that breaks any Airflow import.
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    monkeypatch.delenv("_AIRFLOW__REEXECUTED_PROCESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("DLH_TEST_MODULES_OUT", str(out))

    # The dump sees Airflow when a process imports it (the operator layer's error module), and in
    # this environment that import fails, as it did for the supervisor before it avoided Airflow.
    probe = subprocess.run([sys.executable, "-c", "import dlh_airflow_common.airflow_errors"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert probe.returncode != 0 and "Could not parse SQLAlchemy URL" in probe.stderr, probe.stderr
    (probe_dump,) = tmp_path.glob("modules.*")
    assert "airflow.sdk.exceptions" in _airflow_modules(probe_dump)
    probe_dump.unlink()

    profile = resolve_profile(ProfileConfig(connection=duck), demo_project)
    ctl = DetachedRun(project_dir=str(demo_project), runtime_root=runtime_root, command=DbtCommand("deps"),
                      identity=RunIdentity("dag", "task", 1), profile=profile, env_vars={}).launch()
    deadline = time.monotonic() + 180
    while (status := ctl.read_status() or {}).get("state") not in TERMINAL:
        assert time.monotonic() < deadline, ctl.progress_tail()
        time.sleep(0.2)
    assert status["state"] == "success", ctl.progress_tail()
    dump = Path(f"{out}.{status['pid']}")
    while not dump.exists():  # written at exit, just after the final status
        assert time.monotonic() < deadline, ctl.progress_tail()
        time.sleep(0.1)
    modules = dump.read_text().splitlines()
    assert "dlh_airflow_common.core.detached" not in modules  # it ran as __main__ ...
    assert "dlh_airflow_common.core.invoke" in modules  # ... and ran dbt through the core
    assert _airflow_modules(dump) == []
    assert ControlDir(ctl.path).spec.is_file()


def test_core_errors_reach_airflow_as_airflow_exceptions(tmp_path: Path) -> None:
    """Plain in the core; the same objects, also AirflowExceptions, once they leave the hook/operator."""
    from airflow.sdk.exceptions import AirflowException

    from dlh_airflow_common.hooks.dbt import DbtHook

    assert not issubclass(DbtException, AirflowException)
    with pytest.raises(DbtProjectException) as raised:
        DbtHook(str(tmp_path / "missing"), profiles_dir=str(tmp_path)).run_dbt_task("build")
    exc = raised.value
    assert isinstance(exc, AirflowException) and isinstance(exc, DbtException)
    assert type(exc).__name__ == "DbtProjectException" and "does not exist" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert isinstance(again, DbtProjectException) and isinstance(again, AirflowException)
    assert str(again) == str(exc)
    assert type(exception_from_dict(exc.to_dict())) is DbtProjectException  # the core's own class
    assert os.environ.get("_AIRFLOW__REEXECUTED_PROCESS") is None


def _launch(project: Path, conn: ConnectionInfo, runtime_root: Path, slow: int, unwatched: float) -> ControlDir:
    profile = resolve_profile(ProfileConfig(connection=conn), project)
    return DetachedRun(project_dir=str(project), runtime_root=runtime_root,
                       command=DbtCommand("build", select="+slow_model", vars={"slow_seconds": slow},
                                          exclude="test_type:data"),
                       identity=RunIdentity("dag", f"slow_{slow}", 1), profile=profile, env_vars={},
                       cancel_grace=10, unwatched_timeout=unwatched).launch()


def _final(ctl: ControlDir, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (status := ctl.read_status() or {}).get("state") not in TERMINAL:
        assert time.monotonic() < deadline, ctl.progress_tail()
        time.sleep(0.2)
    return status


def _deps(project: Path, conn: ConnectionInfo, runtime_root: Path) -> None:
    DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=runtime_root).invoke(DbtCommand("deps"))


def test_supervisor_cancels_a_run_no_trigger_watches_any_more(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer) -> None:
    """Airflow < 3.3 drops a killed task's trigger without on_kill: the watcher's silence is the kill."""
    _deps(demo_project, pg_conn, runtime_root)
    ctl = _launch(demo_project, pg_conn, runtime_root, slow=120, unwatched=3)
    sleeping = "select 1 from pg_stat_activity where query like '%pg_sleep(120)%' and pid <> pg_backend_pid()"
    pg.wait_until(sleeping, lambda rows: len(rows) == 1, timeout=120)
    assert dbt_processes(runtime_root) and list((runtime_root / "runs").iterdir())  # what must go, seen
    # What a killed trigger reports when dbt's own summary is late: the nodes, as dbt ran them (the
    # supervisor writes them at most every 0.5 s).
    deadline = time.monotonic() + 10
    while True:
        status = ctl.read_status() or {}
        nodes = status.get("nodes") or {}
        if nodes.get("running") == ["model.demo.slow_model"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status.get("state") == "running"  # never watched: not cancelled yet
    assert nodes.get("running") == ["model.demo.slow_model"], status
    assert sum((nodes.get("counts") or {}).values()) >= 2 and nodes.get("failures") == [], status
    ctl.mark_watched()  # a trigger watched once, then was dropped
    seen_at = time.monotonic()
    assert no_dbt_processes(runtime_root, 60), dbt_processes(runtime_root)
    gone_after = time.monotonic() - seen_at
    assert 3 < gone_after < 3 + 10 + 10, gone_after  # unwatched_timeout, then at most cancel_grace
    pg.wait_until(sleeping, lambda rows: rows == [], timeout=10)
    deadline = time.monotonic() + 10
    while ctl.path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ctl.path.exists()  # abandoned: nobody resumes a task to read it
    assert list((runtime_root / "runs").iterdir()) == []


def test_supervisor_lets_a_watched_or_never_watched_run_finish(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer) -> None:
    """A trigger that keeps watching, and a task not yet deferred (no watch yet), are never cancelled."""
    _deps(demo_project, pg_conn, runtime_root)
    other = dataclasses.replace(pg_conn, extra={**pg_conn.extra, "schema": pg_conn.extra["schema"] + "_b"})
    watched = _launch(demo_project, pg_conn, runtime_root, slow=8, unwatched=2)
    unwatched = _launch(demo_project, other, runtime_root, slow=9, unwatched=2)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            watched.mark_watched()

    threading.Thread(target=watch, daemon=True).start()
    try:
        states = [_final(ctl, 240)["state"] for ctl in (watched, unwatched)]
    finally:
        stop.set()
    assert states == ["success", "success"], [ctl.progress_tail() for ctl in (watched, unwatched)]
    assert "No trigger has watched" not in watched.progress.read_text()


def test_a_run_watched_through_a_store_that_goes_away_is_stopped_and_its_trigger_names_the_cause(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's endpoint stops mid-run: the trigger fails with the store's URL and the cause after its
    bounded wait, and the supervisor, no longer getting `watched` stamps, stops dbt after unwatched_timeout."""
    from dlh_airflow_common.core.store_control import control_key
    from dlh_airflow_common.state_store import StoreSetting
    from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger
    from tests.s3server import BUCKET, S3Server
    from tests.trigger_events import first_event_after

    _deps(demo_project, pg_conn, runtime_root)
    sleeping = "select 1 from pg_stat_activity where query like '%pg_sleep(120)%' and pid <> pg_backend_pid()"
    gone = S3Server().start()
    try:
        gone.create_bucket(BUCKET)
        monkeypatch.setenv(*gone.connection_env("dlh_s3_gone"))
        store, key = StoreSetting(f"s3://{BUCKET}/gone", "dlh_s3_gone"), control_key("00000001-gone")
        profile = resolve_profile(ProfileConfig(connection=pg_conn), demo_project)
        ctl = DetachedRun(project_dir=str(demo_project), runtime_root=runtime_root,
                          command=DbtCommand("build", select="+slow_model", vars={"slow_seconds": 120},
                                             exclude="test_type:data"),
                          identity=RunIdentity("dag", "store_gone", 1), profile=profile, env_vars={},
                          cancel_grace=10, unwatched_timeout=5, store=store, control_key=key).launch()
        pg.wait_until(sleeping, lambda rows: len(rows) == 1, timeout=120)
        assert dbt_processes(runtime_root), "the helper sees no dbt process while dbt runs"
        trigger = DbtExecutionTrigger(control_dir=str(ctl.path), check_interval=1, heartbeat_timeout=5,
                                      state_store=store.url, state_store_conn_id=store.conn_id, store_key=list(key))
        # the endpoint stops once the trigger has stamped `watched` and the supervisor has taken it (2 s)
        event, after = first_event_after(trigger, 6, gone.stop, 120)
        stopped = time.monotonic() - after
    finally:
        gone.stop()
    assert event["status"] == "error", event
    assert "could not be read" in event["message"] and f"s3://{BUCKET}/gone" in event["message"], event
    assert 5 <= after < 60, after
    assert no_dbt_processes(runtime_root, 60), dbt_processes(runtime_root)
    assert time.monotonic() - stopped < 5 + 10 + 30  # unwatched_timeout, cancel_grace, a slow machine
    pg.wait_until(sleeping, lambda rows: rows == [], timeout=10)
