"""A new user's first hour (issue 20): no hang, no silent no-op, the first error raised, data where meant."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_in_mount_namespace

DAG_FILE = REPO / "tests" / "dags" / "first_hour_dags.py"
NOT_SHARED = 'execution="streamed" needs the runtime root'  # the producer's error: shared root undeclared


@pytest.fixture(scope="module")
def bag(airflow_db: None) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2 (make test-compat)
        from airflow.models.dagbag import DagBag

    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


@pytest.mark.timeout(180)
def test_node_tasks_end_within_seconds_of_a_producer_that_failed_before_launch(
        bag: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DLH_DBT_SHARED_RUNTIME_ROOT")
    dag = bag.get_dag("first_hour_producer_fails")
    dr = dag.test()  # returns (before the fix, node tasks rescheduled forever: the timeout marker)
    states = _states(dr)
    assert states.pop("dbt_producer") == "failed"
    assert states.pop("dbt_assets_of_failed_builds") == "skipped"  # no dbt: nothing built
    assert set(states.values()) == {"failed"}, states
    ended = {ti.task_id: ti.end_date for ti in dr.get_task_instances()}
    producer_end = ended.pop("dbt_producer")
    late = max(ended.values()) - producer_end
    assert late.total_seconds() < 30, f"the last node task ended {late} after its producer"
    out = "".join(capfd.readouterr())  # the task logs (structlog writes them to stdout here)
    assert "The producer task dbt_producer failed before it started dbt" in out
    assert NOT_SHARED in out


@pytest.mark.timeout(180)
def test_node_tasks_end_when_airflow_says_their_producer_never_ran(bag: Any,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    dr = bag.get_dag("first_hour_producer_never_runs").test()
    states = _states(dr)
    assert states.pop("extract_fails") == "failed" and states.pop("dbt_producer") == "upstream_failed"
    assert states.pop("dbt_assets_of_failed_builds") == "skipped"  # no dbt: nothing built
    assert set(states.values()) == {"failed"}, states
    out = "".join(capfd.readouterr())
    assert "The producer task dbt_producer ended upstream_failed without a dbt run" in out, out[-3000:]

@pytest.mark.timeout(240)
def test_airflow_dags_test_ends_when_the_producer_failed_before_launch(airflow_db: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLH_DBT_SHARED_RUNTIME_ROOT"}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "first_hour_producer_fails", "-f", str(DAG_FILE)],
        env=env, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert "The producer task dbt_producer failed before it started dbt" in out, out[-3000:]
    assert NOT_SHARED in out



def test_a_node_trigger_ends_at_once_when_its_producer_failed_before_launch(tmp_path: Path) -> None:
    """Where node tasks are born in the triggerer (Airflow >= 3.3, a real scheduler)."""
    import asyncio

    from dlh_airflow_common.core.stream import mark_failed_before_launch, stream_dir
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    mark_failed_before_launch(tmp_path, stream_dir(tmp_path, "d", "r"), "DbtException: no runtime root",
                              final=True)
    trigger = DbtNodeTrigger("model.x.a", str(tmp_path), end_task=False, dag_id="d", run_id="r",
                             try_number=1, poll_interval=0.05)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    event = asyncio.run(asyncio.wait_for(first(), 10))
    assert event["outcome"] == "failed"
    assert event["message"] == ("The producer task dbt_producer failed before it started dbt, so no node "
                                "was built: DbtException: no runtime root")

# -- 3. the first error is the one raised, naming the argument the user passed ---------------------
def test_a_missing_project_dir_fails_the_task_with_the_clear_error(bag: Any,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    dr = bag.get_dag("first_hour_missing_project").test()
    assert _states(dr) == {"dbt_build": "failed"}
    out = "".join(capfd.readouterr())
    assert "FileNotFoundError" not in out, out[-3000:]  # reporting the failure never replaces it
    assert "DbtProjectException: dbt project directory '/nonexistent/first_hour/dbt_project' does not exist" \
        in out, out[-3000:]
    assert "pass DbtOperator(dbt_project_dir=...) pointing at" in out


def test_a_missing_project_dir_in_a_hook_names_the_hooks_argument(tmp_path: Path) -> None:
    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.hooks.dbt import DbtHook

    with pytest.raises(DbtProjectException, match=r"pass DbtHook\(dbt_project_dir=\.\.\.\) pointing at"):
        DbtHook(tmp_path / "missing", conn_id="render_duck").run_dbt_task("build")


@pytest.mark.parametrize("shape", ["single", "layers", "nodes"])
def test_a_missing_project_dir_in_every_shape_names_dbt_project(tmp_path: Path, shape: str) -> None:
    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.rendering import DbtProject, dbt_dag

    project = DbtProject(project_dir=str(tmp_path / "missing"), conn_id="render_duck", shape=shape,  # type: ignore[arg-type]
                         layers={"all": "path:models"} if shape == "layers" else {})
    with pytest.raises(DbtProjectException) as raised:
        dbt_dag(f"first_hour_missing_{shape}", project, schedule=None)
    assert str(raised.value) == (f"dbt project directory '{tmp_path / 'missing'}' does not exist or is not a "
                                 "directory; pass DbtProject(project_dir=...) pointing at the folder that "
                                 "holds dbt_project.yml")


# -- 2. no silent no-op: a selection that matches nothing fails in every shape ----------------------
def _nothing_message() -> str:
    from dlh_airflow_common.core.selection import empty_selection_message

    return empty_selection_message(Path(os.environ["DLH_RENDER_PROJECT_DIR"]).name, ["tag:no_such_tag"], [],
                                   None)


def test_an_empty_selection_fails_the_single_shape_unless_allowed(bag: Any,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    dr = bag.get_dag("first_hour_empty_single").test()
    assert _states(dr)["dbt_build"] == "failed"
    out = "".join(capfd.readouterr())
    assert f"DbtEmptySelectionException: {_nothing_message()}" in out, out[-3000:]
    dr = bag.get_dag("first_hour_empty_single_allowed").test()
    assert _states(dr)["dbt_build"] == "success"


@pytest.mark.parametrize("shape", ["layers", "nodes"])
def test_an_empty_selection_fails_the_render_of_the_other_shapes_unless_allowed(airflow_db: None,
                                                                                 shape: str) -> None:
    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.rendering import DbtProject, dbt_dag

    def project(**kw: Any) -> DbtProject:
        return DbtProject(project_dir=os.environ["DLH_RENDER_PROJECT_DIR"], conn_id="render_duck",
                          shape=shape, select=["tag:no_such_tag"],  # type: ignore[arg-type]
                          layers={"all": "path:models"} if shape == "layers" else {}, **kw)

    with pytest.raises(DbtProjectException) as raised:
        dbt_dag(f"first_hour_empty_{shape}", project(), schedule=None)
    assert str(raised.value) == _nothing_message()
    dag = dbt_dag(f"first_hour_empty_{shape}_allowed", project(allow_empty_selection=True), schedule=None)
    assert all(t.task_id in {"dbt_deps", "all", "dbt_assets_of_failed_builds"} for t in dag.tasks), dag.task_ids


def test_a_hook_run_whose_selection_matches_nothing_fails_unless_allowed(airflow_db: None) -> None:
    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.hooks.dbt import DbtHook

    hook = DbtHook(os.environ["DLH_RENDER_PROJECT_DIR"], conn_id="render_duck")
    with pytest.raises(DbtProjectException) as raised:
        hook.run_dbt_task("run", select=["tag:no_such_tag"])
    assert raised.value.message == _nothing_message()
    assert hook.run_dbt_task("run", select=["tag:no_such_tag"], allow_empty_selection=True).success


# -- 4. data lands where the user meant: a relative DuckDB path is a file in the project dir ---------
def _mini_project(root: Path, path: str = "mini.duckdb") -> Path:
    """A one-model project with its own profiles.yml whose DuckDB path is relative."""
    project = root / "mini"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: mini\nversion: '1.0'\nprofile: mini\n")
    (project / "models" / "m.sql").write_text("select 1 as id\n")
    (project / "profiles.yml").write_text(
        f"mini:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: {path}\n      threads: 1\n")
    return project


def test_a_relative_duckdb_path_is_a_file_in_the_project_dir_and_the_lock_guards_it(tmp_path: Path) -> None:
    import duckdb

    from dlh_airflow_common.core import DbtCommand, DbtInvoker, ProfileConfig

    project = _mini_project(tmp_path)
    profiles = (project / "profiles.yml").read_text()
    said: list[str] = []
    runtime = tmp_path / "runtime"
    DbtInvoker(project, ProfileConfig(profiles_dir=str(project)), runtime_root=runtime,
               progress=said.append).invoke(DbtCommand("build"))
    db = project / "mini.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select id from main.m").fetchall() == [(1,)]  # the file dbt wrote
    assert (project / "mini.duckdb.dlh-lock").is_file()  # the lock guarded that same file
    assert f"DuckDB file: {db}" in said
    assert not list(runtime.rglob("*.duckdb")), "data went under the runtime root"
    assert (project / "profiles.yml").read_text() == profiles  # the user's file is never rewritten


def test_a_relative_duckdb_path_from_a_connection_is_a_file_in_the_project_dir(tmp_path: Path) -> None:
    import duckdb

    from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig

    project = _mini_project(tmp_path)
    conn = ConnectionInfo("duck", "duckdb", host="data.duckdb")
    DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=tmp_path / "runtime").invoke(
        DbtCommand("run"))
    with duckdb.connect(str(project / "data.duckdb"), read_only=True) as con:
        assert con.execute("select id from main.m").fetchall() == [(1,)]


READONLY_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    src, mnt, root, report = map(Path, sys.argv[1:5])
    subprocess.run(["mount", "-o", "bind,ro", str(src), str(mnt)], check=True)
    out = {"writable": os.access(mnt, os.W_OK)}  # False on a read-only mount, even for root
    from dlh_airflow_common.core import DbtCommand, DbtInvoker, ProfileConfig
    for cmd in ["run", "ls"]:
        inv = DbtInvoker(mnt, ProfileConfig(profiles_dir=str(mnt)), runtime_root=root)
        try:
            out[cmd] = {"ok": inv.invoke(DbtCommand(cmd)).success}
        except Exception as exc:
            out[cmd] = {"ok": False, "type": type(exc).__name__, "error": str(exc)}
    report.write_text(json.dumps(out))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_relative_duckdb_path_in_a_read_only_project_is_refused_with_the_fix(tmp_path: Path) -> None:
    project = _mini_project(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = run_in_mount_namespace(READONLY_SCRIPT, tmp_path, project, mnt, tmp_path / "runtime")
    assert out["writable"] is False, "the mount is not read-only: the test would prove nothing"
    assert out["run"]["type"] == "DbtProfileException", out
    assert (f"The DuckDB path 'mini.duckdb' is relative, so it means {mnt / 'mini.duckdb'} (in the dbt "
            f"project dir, as when dbt runs there), but {mnt} is read-only. Set the target's path to an "
            "absolute path") in out["run"]["error"], out
    assert out["ls"]["ok"], out  # commands that open no database still run
