"""Retention under the runtime root: 200 runs of each kind leave only what it keeps, never a live run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core.retention import ACTIVE_FILE, Retention, maybe_prune, prune
from dlh_airflow_common.core.runtime import DbtRuntime, RunIdentity

HOUR = 3600.0


def _age(path: Path, hours: float) -> None:
    """Make a dir (and its direct entries, which count as its activity) ``hours`` old."""
    when = time.time() - hours * HOUR
    for entry in [*path.iterdir(), path]:
        os.utime(entry, (when, when), follow_symlinks=False)


def _leftovers(root: Path, demo_project: Path, n: int) -> dict[str, list[Path]]:
    """``n`` finished dirs of every kind, the i-th i - 0.5 hours old, plus one of each just written."""
    made: dict[str, list[Path]] = {"runs": [], "retry_state": [], "deferred": [], "streams": [], "state": []}
    for i in range(n + 1):
        run = DbtRuntime.create(demo_project, runtime_root=root, identity=RunIdentity("dag", f"t{i}", 1),
                                keep_target_artifacts=True)
        (run.target_dir / "run_results.json").write_text("{}")
        run.cleanup()
        retry = root / "retry_state" / "dag" / f"t{i}" / "manual__1"
        ctl = root / "deferred" / f"run_{i}"
        stream = root / "streams" / f"dag{i % 2}" / f"manual__{i}" / "run_launch"
        state = root / "state" / "salesforce" / "runs" / f"manual__{i}"
        for path in (retry, ctl, stream, state):
            path.mkdir(parents=True)
        (retry / "run_results.json").write_text("{}")
        for control in (ctl, stream):
            (control / "status.json").write_text(json.dumps({"state": "failed", "heartbeat": 0}))
        (state / "manifest.json").write_text("{}")
        for kind, path in zip(made, (run.run_dir, retry, ctl, stream, state), strict=True):
            made[kind].append(path)
            if i:
                _age(path, i - 0.5)
    return made


def test_200_runs_leave_only_what_retention_keeps_and_never_a_live_one(demo_project: Path,
                                                                       runtime_root: Path) -> None:
    made = _leftovers(runtime_root, demo_project, 200)
    # Live runs, all far older than any limit: a running dbt (its DbtRuntime holds the lock), a
    # supervisor in another process (holds the lock), a supervisor on another host (fresh heartbeat).
    live_run = DbtRuntime.create(demo_project, runtime_root=runtime_root, keep_target_artifacts=True)
    _age(live_run.run_dir, 1000)
    live_ctl = runtime_root / "deferred" / "run_live"
    live_ctl.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
         str(live_ctl / ACTIVE_FILE)], stdout=subprocess.PIPE, text=True)
    remote_ctl = runtime_root / "deferred" / "run_remote"
    remote_ctl.mkdir()
    (remote_ctl / "status.json").write_text(json.dumps({"state": "running", "heartbeat": time.time()}))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        _age(live_ctl, 1000)
        _age(remote_ctl, 1000)
        live = [live_run.run_dir, live_ctl, remote_ctl]

        # By age (100 h), then by count (the newest 20 of each kind; the fresh one is under min_age).
        removed = prune(runtime_root, Retention(max_age=100 * HOUR, keep=150, min_age=HOUR))
        for kind, paths in made.items():
            assert [p.exists() for p in paths] == [True] * 101 + [False] * 100, kind
        assert all(p.exists() for p in live)
        assert len(removed) == 5 * 100
        prune(runtime_root, Retention(max_age=100 * HOUR, keep=20, min_age=HOUR))
        for kind, paths in made.items():
            assert [p.exists() for p in paths] == [True] * 20 + [False] * 181, kind
        assert all(p.exists() for p in live)
        assert sorted(p.name for p in (runtime_root / "retry_state" / "dag").iterdir()) == sorted(
            f"t{i}" for i in range(20))  # no empty <dag>/<task> dirs left behind

        # The same dirs go once their runs end: it was their liveness that kept them.
        live_run.cleanup()
        holder.kill()
        holder.wait()
        (remote_ctl / "status.json").write_text(json.dumps({"state": "running", "heartbeat": 0}))
        for path in live:
            _age(path, 1000)
        prune(runtime_root, Retention(max_age=100 * HOUR, keep=20, min_age=HOUR))
        assert not any(p.exists() for p in live)
    finally:
        holder.kill()
        holder.wait()


def test_the_operator_prunes_at_most_once_per_interval(runtime_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.operators import settings
    from dlh_airflow_common.operators.dbt import DbtOperator

    monkeypatch.setenv(settings.RETENTION_KEEP_ENV, "3")
    assert settings.retention(None, None).keep == 3 and settings.retention(None, 7).keep == 7
    monkeypatch.setenv(settings.RETENTION_HOURS_ENV, "2")
    assert settings.retention(None, None).max_age == 2 * HOUR
    old = [runtime_root / "runs" / f"run_{i}" for i in range(5)]
    for i, path in enumerate(old):
        path.mkdir(parents=True)
        _age(path, 1.1 + i / 10)  # over min_age, under the 2 h max age: only the count removes them
    op = DbtOperator(task_id="dbt", command="build", dbt_project_dir=str(tmp_path / "missing"),
                     profiles_dir=str(tmp_path), runtime_root=str(runtime_root))
    context = {"ti": SimpleNamespace(dag_id="d", task_id="dbt", try_number=1, run_id="r")}
    with pytest.raises(DbtProjectException):
        op.execute(context)  # type: ignore[arg-type]
    assert [p.exists() for p in old] == [True] * 3 + [False] * 2
    assert maybe_prune(runtime_root, Retention(keep=0)) is None  # pruned moments ago: a stat, no walk
    assert all(p.exists() for p in old[:3])
    os.utime(runtime_root / ".retention", (0, 0))
    assert len(maybe_prune(runtime_root, Retention(keep=0, min_age=HOUR)) or []) == 3


def test_salesforce_state_runs_are_pruned_where_the_pipeline_keeps_them(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed runs' target dirs are never promoted; the pipeline prunes them, even outside the root."""
    from tests.conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "pipelines" / "salesforce" / "dags"))
    from salesforce_lib import state

    monkeypatch.setenv("SALESFORCE_DBT_STATE_DIR", str(tmp_path / "sf-state"))
    failed = [state.run_target(f"failed_{i}") for i in range(Retention().keep + 5)]
    for i, path in enumerate(failed):
        path.mkdir(parents=True)
        _age(path, 2 + i / 100)  # over min_age, under max_age: the count decides
    chosen = state.selection("manual__now")
    assert Path(str(chosen["target_path"])).is_dir()
    assert [p.exists() for p in failed] == [True] * (Retention().keep - 1) + [False] * 6


def test_a_gone_projects_cache_is_pruned_once_no_run_holds_its_shadow(runtime_root: Path, tmp_path: Path) -> None:
    """An old DAG bundle version's checkout is removed by Airflow; its project cache goes, but never while a
    run still holds one of its shadows, and never while its project dir is there."""
    import fcntl

    from dlh_airflow_common.core.retention import IN_USE
    from dlh_airflow_common.core.runtime import ProjectCache
    from dlh_airflow_common.core.safefs import ensure_dir, open_state_file

    project = tmp_path / "versions" / "abc123" / "dags" / "gen"
    project.mkdir(parents=True)
    cache = ProjectCache.for_project(runtime_root, project).root
    shadow = ensure_dir(runtime_root, cache / "shadows" / "v1")
    held = open_state_file(shadow / IN_USE)
    fcntl.flock(held, fcntl.LOCK_SH)  # as a running dbt holds its shadow
    policy = Retention(min_age=0)
    assert prune(runtime_root, policy) == [] and cache.is_dir()  # the project is still there
    project.rmdir()
    assert prune(runtime_root, policy) == [] and cache.is_dir()  # gone, but a run holds a shadow
    os.close(held)
    _age(cache, 0.5)
    assert prune(runtime_root, Retention()) == [] and cache.is_dir()  # younger than min_age (1 h)
    assert prune(runtime_root, policy) == [cache] and not cache.exists()
