"""Separate hosts, simulated for real: the scheduler (with its workers), the triggerer and the dag-processor
each run in a mount namespace of their own (``unshare -m``) with a private tmpfs at the runtime root's path,
so the only state they share is the S3 endpoint (moto, loopback) and the metadata DB.

Under a real LocalExecutor stack: the namespaces first prove they share no runtime root; then streamed
per-node DAGs with one failing model run with their producer detached (the default here) and as a sync
task, node tasks starting and ending in the triggerer and reading only the store; deferrable tasks are
watched, resumed and cancelled through the store; and a failed try's Airflow retry resumes with
``dbt retry`` after the scheduler moved to a new namespace (a new, empty runtime root).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow_stack import AirflowStack, _airflow
from tests.conftest import CANARY, REPO, needs_airflow
from tests.pgserver import PgServer, free_port
from tests.processes import dbt_processes, no_dbt_processes
from tests.render_project import SLOW_SECONDS, load_external, make_render_project, make_slow_project
from tests.s3server import BUCKET, CONN_ID, S3Server
from tests.test_scheduler_smoke import Smoke, _trigger, _wait, boot, shut_down, stack_env
from tests.test_streamed_smoke import _run, _states, _task_log_dir, _trigger_started, _worker_trace

META_DB = "airflow_meta_store_ns"
DAG_ID, SYNC_DAG = "store_streamed_smoke", "store_streamed_sync"
DEFERRED, KILLED, RETRY = "store_deferred_build", "store_deferred_kill", "store_retry_across"
SLEEPING = (f"select pid from pg_stat_activity where query like '%pg_sleep({SLOW_SECONDS})%' "
            "and pid <> pg_backend_pid()")
DAGS = REPO / "tests" / "store_smoke_dags"
NAMESPACED = {"scheduler", "triggerer", "dag-processor"}
# Mount a private tmpfs (0700) at the runtime root's path, then become the component.
PRIVATE_ROOT = 'mount -t tmpfs -o mode=0700 dlh-runtime "$0" && exec "$@"'


class NamespacedStack(AirflowStack):
    """Each component in ``NAMESPACED`` starts in a mount namespace of its own, with a runtime root nobody
    else sees (``unshare`` execs in place: the component keeps the pid we started)."""

    def __init__(self, home: Path, env: dict[str, str], api_port: int, runtime: Path) -> None:
        super().__init__(home, env, api_port)
        self.runtime = runtime

    def start(self, name: str, *args: str, label: str | None = None) -> None:
        if name not in NAMESPACED:
            super().start(name, *args, label=label)
            return
        with (self.logs / f"{label or name}.log").open("ab") as log:
            self.procs[label or name] = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_ROOT, str(self.runtime),
                 *_airflow(name, *args, python=self.python)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def restart(self, name: str, *args: str) -> None:
        """Stop one component (its whole group) and start it again: in a new namespace, a new tmpfs."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.start(name, *args)

    def mount_namespace(self, component: str) -> str:
        return os.readlink(f"/proc/{self.procs[component].pid}/ns/mnt")

    def in_namespace(self, component: str, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.procs[component].pid), "-m", "sh", "-c", script],
                              capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def smoke(pg: PgServer, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smoke]:
    tmp = tmp_path_factory.mktemp("store-ns")
    pg.execute(f"drop database if exists {META_DB} with (force)")
    pg.execute(f"create database {META_DB}")
    home, runtime = tmp / "airflow", tmp / "dbt-runtime"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    env = stack_env(pg, home, runtime, free_port(), meta_db=META_DB, dags=DAGS)
    del env["DLH_DBT_SHARED_RUNTIME_ROOT"]  # not shared: that is the point
    gen = make_render_project(tmp / "gen")
    extra = gen / "models" / "extra"  # ten more models: the streamed DAGs have 21 node tasks
    extra.mkdir()
    for n in range(10):
        (extra / f"extra_{n}.sql").write_text("select id from {{ ref('stg_a') }}\n")
    load_external(tmp / "warehouse.duckdb")
    conn_var, conn = s3.connection_env()
    env.update({
        "DLH_STORE_SMOKE_DIR": str(gen),
        "DLH_STORE_SLOW_DIR": str(make_slow_project(tmp / "slow")),
        "DLH_STORE_FLAKY_CSV": str(tmp / "flaky.csv"),  # the flaky model fails until the test writes it
        "AIRFLOW_CONN_STORE_SMOKE_PG": json.dumps({
            "conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
            "password": CANARY, "schema": "warehouse", "extra": {"schema": "store_ns", "threads": 4}}),
        "AIRFLOW_CONN_STORE_SMOKE_DUCK": json.dumps({"conn_type": "duckdb", "host": str(tmp / "warehouse.duckdb"),
                                                     "extra": {"threads": 4}}),
        "DLH_DBT_STATE_STORE": f"s3://{BUCKET}/namespaces", "DLH_DBT_STATE_STORE_CONN_ID": CONN_ID,
        conn_var: conn,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "180",  # a cold render (`dbt ls`) in the dag-processor's root
    })
    stack = NamespacedStack(home, env, int(env["AIRFLOW__API__BASE_URL"].rsplit(":", 1)[1]), runtime)
    smoke = Smoke(stack, gen, runtime, home, pg, tmp / "warehouse.duckdb", [], meta_db=META_DB)
    started = time.monotonic()
    try:
        boot(stack, smoke.meta, (DAG_ID, SYNC_DAG, DEFERRED, KILLED, RETRY), timeout=300)
        smoke.phases.append(f"parsed {time.monotonic() - started:.1f}s")
        yield smoke
    finally:
        survivors = shut_down(smoke, "store namespaces", started)
    assert not survivors, f"processes survived the stack: {survivors}"


def test_the_components_share_no_runtime_root(smoke: Smoke) -> None:
    """Else the test below could pass through a shared volume."""
    stack = smoke.stack
    assert isinstance(stack, NamespacedStack)
    probe = smoke.runtime / "written-by-the-scheduler"
    wrote = stack.in_namespace("scheduler", f"echo x > {probe} && cat {probe}")
    assert wrote.returncode == 0 and wrote.stdout.strip() == "x", wrote
    for other in ("triggerer", "dag-processor"):
        seen = stack.in_namespace(other, f"test -e {probe}")
        assert seen.returncode == 1, (other, seen)
    assert not probe.exists()  # nor the test's own namespace


@needs_airflow("3.3")
@pytest.mark.parametrize(("dag_id", "variant"), [(DAG_ID, "detached"), (SYNC_DAG, "sync")])
def test_a_streamed_run_across_namespaces_goes_through_the_store(smoke: Smoke, s3: S3Server, dag_id: str,
                                                                  variant: str) -> None:
    run_id = "across"
    _trigger(smoke, dag_id, run_id)
    _run(smoke, dag_id, run_id, timeout=420)  # the run's own state follows its leaves (trigger_rule="always")
    states = _states(smoke, dag_id, run_id)
    nodes = {t: s for t, s in states.items() if t not in ("dbt_producer", "dbt_assets_of_failed_builds")}
    assert len(nodes) >= 20, states  # a task per seed and model (tests run with their model)
    assert states["model.boom"] == "failed", f"{states}\n{smoke.stack.report()}"
    assert states["model.boom_child"] == "skipped", states
    assert states["model.mart_1"] == "success" and states["seed.raw_events"] == "success", states
    assert {s for t, s in nodes.items() if t not in ("model.boom", "model.boom_child")} == {"success"}, states
    assert states["dbt_producer"] == "failed", states
    producer_log = "\n".join(p.read_text(errors="replace") for p in
                             sorted(_task_log_dir(smoke, dag_id, run_id, "dbt_producer").glob("attempt=*.log*")))
    if variant == "sync":
        assert "Producer runs dbt in this task (sync)" in producer_log, producer_log[-3000:]
        assert "State store requests by this producer" in producer_log
    else:  # dbt ran detached in the scheduler's namespace; its trigger watched it from the triggerer's
        assert "started detached" in producer_log and "deferring" in producer_log, producer_log[-3000:]
        assert "State store requests of this run" in producer_log, producer_log[-3000:]
    rows = {str(r[0]): r[1:] for r in smoke.meta(
        "select task_id, queued_dttm, hostname, pid from task_instance where dag_id = %s and run_id = %s",
        dag_id, run_id)}
    run_dir = smoke.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task in ("model.boom", "model.boom_child", "model.mart_1"):
        assert not _worker_trace(rows[task], run_dir / f"task_id={task}"), f"{task} ran on a worker: {rows[task]}"
    assert any("/nodes/" in k for k in s3.keys(BUCKET, "namespaces/streams/"))
    assert not any(smoke.runtime.iterdir())  # the host's path was never written: each component had its own
    _wait("the producer's mirror to be cleaned", lambda: not s3.keys(BUCKET, "namespaces/deferred/"),
          smoke.stack, 30)


def test_a_deferred_task_is_watched_and_resumed_across_namespaces(smoke: Smoke, s3: S3Server) -> None:
    """dbt runs detached in the scheduler's namespace; the trigger, in the triggerer's, reads only the store."""
    _trigger(smoke, DEFERRED, "across")
    assert _run(smoke, DEFERRED, "across", timeout=300) == "success", smoke.stack.report()
    log = "\n".join(p.read_text(errors="replace") for p in _task_log_dir(smoke, DEFERRED, "across", "dbt").glob("*"))
    assert "dbt summary:" in log or "Completed successfully" in log, log[-3000:]  # relayed from the store
    _wait("the run's objects to go", lambda: not s3.keys(BUCKET, "namespaces/deferred/"), smoke.stack, 30)


@needs_airflow("3.3")  # the triggerer calls a trigger's on_kill from Airflow 3.3 on
def test_a_deferred_task_marked_failed_stops_dbt_across_namespaces(smoke: Smoke, s3: S3Server) -> None:
    run_id = "killed"
    _trigger(smoke, KILLED, run_id)

    def sleeping() -> bool:
        return bool(smoke.pg.execute(SLEEPING)) and _states(smoke, KILLED, run_id).get("dbt") == "deferred" \
            and _trigger_started(smoke, KILLED, run_id, "dbt")

    _wait("dbt to be in pg_sleep, its task deferred", sleeping, smoke.stack, timeout=240)
    assert dbt_processes(smoke.runtime), "the helper sees no dbt process while dbt runs"
    assert s3.keys(BUCKET, "namespaces/deferred/"), "the run is not mirrored to the store"
    killed = time.monotonic()
    smoke.api("PATCH", f"/api/v2/dags/{KILLED}/dagRuns/{run_id}/taskInstances/dbt", {"new_state": "failed"})
    assert no_dbt_processes(smoke.runtime, 90), f"{dbt_processes(smoke.runtime)}\n{smoke.stack.report()}"
    smoke.phases.append(f"deferred task marked failed: dbt gone {time.monotonic() - killed:.1f}s")
    _wait("the sleeping query to end", lambda: not smoke.pg.execute(SLEEPING), smoke.stack, timeout=30)
    _wait("the run's objects to be cleaned", lambda: not s3.keys(BUCKET, "namespaces/deferred/"),
          smoke.stack, timeout=30)


def test_a_retry_in_another_namespace_resumes_with_dbt_retry_from_the_store(smoke: Smoke, s3: S3Server) -> None:
    """Try 1 fails in the scheduler's namespace; the scheduler then restarts in a new one (a new, empty
    runtime root) and try 2 finds the previous try's state only in the store."""
    stack = smoke.stack
    assert isinstance(stack, NamespacedStack)
    run_id = "across"
    _trigger(smoke, RETRY, run_id)
    _wait("the first try to fail", lambda: _states(smoke, RETRY, run_id).get("dbt") == "up_for_retry", stack, 240)
    first = stack.mount_namespace("scheduler")
    probe = smoke.runtime / "written-in-the-first-namespace"
    assert stack.in_namespace("scheduler", f"echo x > {probe}").returncode == 0
    assert stack.in_namespace("scheduler", f"test -e {probe}").returncode == 0  # it can be seen where it is
    kept = f"namespaces/retry_state/{RETRY}-"  # (the failed producers above keep theirs, for their retries)
    assert s3.keys(BUCKET, kept), "the failed try left no retry state in the store"
    stack.restart("scheduler", "--skip-serve-logs")
    restarted = time.time()
    assert stack.mount_namespace("scheduler") != first
    assert stack.in_namespace("scheduler", f"test -e {probe}").returncode == 1  # a new runtime root
    Path(stack.env["DLH_STORE_FLAKY_CSV"]).write_text("x\n1\n")
    assert _run(smoke, RETRY, run_id, timeout=240) == "success", stack.report()
    ((try_number, started),) = smoke.meta(
        "select try_number, extract(epoch from start_date) from task_instance where dag_id = %s and run_id = %s",
        RETRY, run_id)
    assert try_number == 2 and float(started) > restarted, (try_number, started, restarted)
    log = (_task_log_dir(smoke, RETRY, run_id, "dbt") / "attempt=2.log").read_text(errors="replace")
    assert "Fetched the previous try's state from the state store" in log, log[-3000:]
    assert "resumes the previous try's failure with `dbt retry`" in log, log[-3000:]
    assert s3.keys(BUCKET, kept) == []  # the success cleared it
