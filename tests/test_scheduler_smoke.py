"""A real Airflow scheduler + dag-processor + triggerer + api-server (LocalExecutor, metadata DB on the
suite's PostgreSQL), started once for this module: it runs a deferrable DbtOperator to success, and
kills running dbt tasks (sync and deferred) the way a user does, by marking them failed.

Everything is started and stopped here, in child processes with their own AIRFLOW_HOME, so the test
process's Airflow configuration is untouched. The DAGs are in tests/smoke_dags/.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common._compat import airflow_at_least
from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig
from tests.airflow_stack import AirflowStack  # the stack class tests and benches import from here
from tests.conftest import CANARY, EXAMPLES, REPO
from tests.pgserver import PgServer, free_port
from tests.processes import dbt_processes, no_dbt_processes

DAG_ID = "smoke_deferrable_dbt"
TASK_ID = "dbt_build"
KILL_DAG_ID = "smoke_kill_dbt"
SMOKE_DAGS = REPO / "tests" / "smoke_dags"
META_DB = "airflow_meta"


def _wait(what: str, predicate: object, stack: AirflowStack, timeout: float, interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate() if callable(predicate) else None
        if result:
            return result
        if stack.dead():
            pytest.fail(f"an Airflow component died while waiting for {what}\n{stack.report()}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{stack.report()}")


def boot(stack: AirflowStack, meta: Callable[..., list[tuple[object, ...]]], dag_ids: Sequence[str],
         timeout: float = 180) -> None:
    """Migrate the metadata DB, start the four components, and wait until ``dag_ids`` are parsed."""
    migrate = stack.cli("db", "migrate", timeout=300)
    assert migrate.returncode == 0, f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
    # The core API too: tests mark tasks and runs failed through it, as the UI does.
    stack.start("api-server", "--apps", "core,execution", "--host", "127.0.0.1", "--port",
                str(stack.api_port), "--workers", "1")
    stack.start("scheduler", "--skip-serve-logs")
    stack.start("dag-processor")
    stack.start("triggerer", "--skip-serve-logs")

    def parsed() -> bool:
        errors = meta("select filename, stacktrace from import_error")
        if errors:
            pytest.fail(f"DAG import errors: {errors}\n{stack.report()}")
        return len(meta("select 1 from serialized_dag where dag_id = any(%s)", list(dag_ids))) == len(dag_ids)

    _wait(f"the DAGs {', '.join(dag_ids)} to be parsed", parsed, stack, timeout=timeout)


@dataclass
class Smoke:
    """The running stack and what the tests need from it."""

    stack: AirflowStack
    project: Path
    runtime: Path
    home: Path
    pg: PgServer
    duckdb: Path
    phases: list[str]
    meta_db: str = META_DB

    def meta(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.pg.dsn(self.meta_db))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A call to the public REST API, as the (all-admins) simple auth manager's user."""
        base = f"http://127.0.0.1:{self.stack.api_port}"
        with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as resp:
            token = json.load(resp)["access_token"]
        req = urllib.request.Request(f"{base}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=1.log*")))


def shut_down(smoke: Smoke, label: str, started: float) -> list[int]:
    """Stop the stack, print its phases, drop its metadata DB; the pids that survived (none expected)."""
    survivors = smoke.stack.stop()
    print(f"{label}: {', '.join(smoke.phases)}; stack {time.monotonic() - started:.1f}s")
    smoke.pg.execute(f"drop database if exists {smoke.meta_db} with (force)")
    return survivors


def stack_env(pg: PgServer, home: Path, runtime: Path, api_port: int, meta_db: str = META_DB,
              dags: Path = SMOKE_DAGS) -> dict[str, str]:
    """The child processes' environment: fresh AIRFLOW_HOME, metadata DB on the test PostgreSQL."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "DLH_", "DBT_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://postgres:{pg.password}@127.0.0.1:{pg.port}/{meta_db}",
        # Airflow derives postgresql+asyncpg from the sync URL itself; stated here to be explicit.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
            f"postgresql+asyncpg://postgres:{pg.password}@127.0.0.1:{pg.port}/{meta_db}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "DLH_DBT_RUNTIME_ROOT": str(runtime),
        "DLH_DBT_SHARED_RUNTIME_ROOT": "true",
    })
    return env


@pytest.fixture(scope="module")
def smoke(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smoke]:
    """The stack, started once: fresh AIRFLOW_HOME, metadata DB on the test PostgreSQL, DAGs parsed."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    pg.execute(f"drop database if exists {META_DB} with (force)")
    pg.execute(f"create database {META_DB}")
    home = tmp_path / "airflow"
    runtime = tmp_path / "dbt-runtime"
    home.mkdir()
    runtime.mkdir()
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, tmp_path / name)
    project = tmp_path / "demo_project"
    api_port = free_port()
    env = stack_env(pg, home, runtime, api_port)
    env.update({
        "DLH_SMOKE_PROJECT_DIR": str(project),
        "AIRFLOW_CONN_SMOKE_DUCK": json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "smoke.duckdb")}),
        "AIRFLOW_CONN_SMOKE_PG": json.dumps({
            "conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
            "password": CANARY, "schema": "warehouse", "extra": {"schema": "smoke"}}),
    })
    stack = AirflowStack(home, env, api_port)
    smoke = Smoke(stack, project, runtime, home, pg, tmp_path / "smoke.duckdb", [])
    started = time.monotonic()

    def phase(name: str) -> None:
        smoke.phases.append(f"{name} {time.monotonic() - started:.1f}s")

    # `dbt deps` once, into the shared runtime root, while Airflow starts up.
    deps_error: list[BaseException] = []

    def deps() -> None:
        try:
            conn = ConnectionInfo("deps", "duckdb", host=str(tmp_path / "deps.duckdb"))
            DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=runtime).invoke(DbtCommand("deps"))
        except BaseException as exc:
            deps_error.append(exc)

    deps_thread = threading.Thread(target=deps, daemon=True)
    deps_thread.start()
    try:
        boot(stack, smoke.meta, (DAG_ID, KILL_DAG_ID))
        phase("parsed")
        deps_thread.join(timeout=120)
        assert not deps_thread.is_alive(), "dbt deps did not finish"
        assert not deps_error, f"dbt deps failed: {deps_error[0]!r}"
        # Each CLI call costs seconds of imports: unpause both DAGs at once, while the api-server comes up.
        clis = [stack.cli_start("dags", "unpause", dag) for dag in (DAG_ID, KILL_DAG_ID)]
        _wait("the api-server to be healthy", stack.api_healthy, stack, timeout=90)
        phase("api up")
        for proc in clis:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{out}"
        phase("unpaused")
        yield smoke
    finally:
        survivors = stack.stop()
        phase("stopped")
        print("scheduler smoke phases:", ", ".join(smoke.phases))
        pg.execute(f"drop database if exists {META_DB} with (force)")
    assert not survivors, f"processes survived the stack: {survivors}"


def _trigger(smoke: Smoke, dag_id: str, run_id: str) -> None:
    smoke.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})


def test_scheduler_triggerer_run_deferrable_dbt(smoke: Smoke) -> None:
    stack = smoke.stack
    _trigger(smoke, DAG_ID, "smoke_run")

    def finished() -> object:
        rows = smoke.meta("select state from dag_run where dag_id = %s and run_id = 'smoke_run'", DAG_ID)
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

    state = _wait("the DAG run to finish", finished, stack, timeout=240)
    smoke.phases.append("smoke run finished")
    assert state == "success", f"DAG run ended {state}\n{stack.report()}"
    ti = smoke.meta("select state, try_number from task_instance where dag_id = %s and run_id = 'smoke_run' "
                    "and task_id = %s", DAG_ID, TASK_ID)
    assert ti and ti[0][0] == "success", f"task instance: {ti}\n{stack.report()}"

    # Proof of deferral: the task log shows the deferral, and the triggerer's log for this task
    # shows DbtExecutionTrigger relaying dbt's progress and firing the success event.
    task_dir = stack.home / "logs" / f"dag_id={DAG_ID}" / "run_id=smoke_run" / f"task_id={TASK_ID}"
    attempt_log = (task_dir / "attempt=1.log").read_text(errors="replace")
    assert "Pausing task as DEFERRED" in attempt_log, f"the task never deferred\n{stack.report()}"
    trigger_log = "\n".join(p.read_text(errors="replace") for p in task_dir.glob("attempt=1.log.trigger.*"))
    if airflow_at_least("3.3"):  # Airflow 3.1's triggerer leaves the trigger's logger name out of its lines
        assert "triggers.dbt.DbtExecutionTrigger" in trigger_log, f"no trigger log\n{stack.report()}"
    assert "OK model.demo.customer_orders" in trigger_log, f"dbt progress not relayed\n{stack.report()}"
    assert "Trigger fired event" in trigger_log and "'status': 'success'" in trigger_log, \
        f"the triggerer did not fire the success event\n{stack.report()}"
    # And dbt really built the warehouse.
    import duckdb

    with duckdb.connect(str(smoke.duckdb), read_only=True) as db:
        built = db.execute("select table_name from information_schema.tables").fetchall()
    assert ("customer_orders",) in built, built
    # The detached dbt run and its supervisor are gone once the task is done, not at teardown.
    assert no_dbt_processes(smoke.runtime, 30), dbt_processes(smoke.runtime)


def _dbt_pids(runtime: Path) -> dict[int, str]:
    """This stack's dbt processes (a new Python or a warm server's fork) and detached supervisors."""
    found = {}
    for line in dbt_processes(runtime):
        pid, cmd = line.split(" ", 1)
        if "core.detached" in cmd:
            found[int(pid)] = cmd
        elif "dlh_airflow_common._dbt_entry" in cmd or "dlh_airflow_common.core.warm" in cmd:
            found[int(pid)] = f"dbt: {cmd}"
    return found


def test_marking_running_dbt_tasks_failed_stops_dbt_and_leaves_nothing(smoke: Smoke) -> None:
    """A user marks a sync and a deferred dbt task failed (REST API, as the UI does) mid-``pg_sleep``.

    From Airflow 3.3 the triggerer calls the deferred task's trigger's on_kill; below, it drops the
    trigger silently and the supervisor cancels dbt once no trigger has watched for
    ``unwatched_timeout`` (15 s in this DAG).
    """
    on_kill = airflow_at_least("3.3")
    stack, run_id, grace = smoke.stack, "kill_run", 10
    unwatched = 0 if on_kill else 15 + 5  # + the trigger's stamp interval
    sleeping = ("select query from pg_stat_activity where query like '%pg_sleep(60%' "
                "and pid <> pg_backend_pid()")
    _trigger(smoke, KILL_DAG_ID, run_id)

    def both_sleeping() -> object:
        queries = " ".join(str(r[0]) for r in smoke.pg.execute(sleeping))
        states = dict(smoke.meta("select task_id, state from task_instance where dag_id = %s and run_id = %s",
                                 KILL_DAG_ID, run_id))
        return ("pg_sleep(600)" in queries and "pg_sleep(601)" in queries
                and states == {"slow_sync": "running", "slow_deferred": "deferred"})

    _wait("both dbt tasks to be in pg_sleep", both_sleeping, stack, timeout=240)
    # What the kill must remove, seen first: two dbt processes and a supervisor, their two run dirs
    # and the deferred run's control dir.
    before = _dbt_pids(smoke.runtime)
    assert len([c for c in before.values() if c.startswith("dbt: ")]) == 2, before
    assert len([c for c in before.values() if "core.detached" in c]) == 1, before
    assert len([p for p in (smoke.runtime / "runs").iterdir() if KILL_DAG_ID in p.name]) == 2
    assert len(list((smoke.runtime / "deferred").iterdir())) == 1

    killed = time.monotonic()
    for task_id in ("slow_sync", "slow_deferred"):
        smoke.api("PATCH", f"/api/v2/dags/{KILL_DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}",
                  {"new_state": "failed"})
    _wait("dbt and its supervisor to exit", lambda: not _dbt_pids(smoke.runtime), stack,
          timeout=unwatched + grace + 30, interval=0.2)
    gone_after = time.monotonic() - killed
    _wait("the sleeping queries to end", lambda: not smoke.pg.execute(sleeping), stack,
          timeout=10, interval=0.2)
    smoke.phases.append(f"dbt gone {gone_after:.1f}s after the kill")
    # The task process notices the new state at its next heartbeat (a few seconds), then dbt gets SIGINT.
    assert gone_after < unwatched + grace + 10, f"dbt took {gone_after:.1f}s to go\n{stack.report()}"
    if not on_kill:  # the deferred run could only stop for the trigger's silence, not before it: 15 s
        # after the trigger's last stamp, which came up to one stamp interval (5 s) before the kill
        assert gone_after > 15 - 5, f"dbt went {gone_after:.1f}s after the kill\n{stack.report()}"
    _wait("run and control dirs to be removed",
          lambda: not [p for p in (smoke.runtime / "runs").iterdir() if KILL_DAG_ID in p.name]
          and not list((smoke.runtime / "deferred").iterdir()), stack, timeout=20)

    sync_log = smoke.task_log(KILL_DAG_ID, run_id, "slow_sync")
    deferred_log = smoke.task_log(KILL_DAG_ID, run_id, "slow_deferred")
    # Both logs end with the cancel and the partial summary: what had run, and what was running. The
    # sync one has dbt's own. The triggerer repeats its cancel every second, often too soon for dbt's
    # (the supervisor still writes it, unread): the trigger then reports the nodes the supervisor had
    # recorded, in the same words.
    assert "Cancelling dbt" in sync_log and "dbt summary: 4 nodes" in sync_log, \
        f"{sync_log[-4000:]}\n{stack.report()}"
    assert "OK model.demo.stg_customers" in deferred_log, deferred_log[-4000:]
    states = dict(smoke.meta("select task_id, state from task_instance where dag_id = %s and run_id = %s",
                             KILL_DAG_ID, run_id))
    assert states == {"slow_sync": "failed", "slow_deferred": "failed"}, states
    if not on_kill:  # nothing tells the trigger: its log ends with the progress it had relayed
        assert "asking the dbt run to cancel" not in deferred_log, deferred_log[-4000:]
        return
    assert "asking the dbt run to cancel" in deferred_log, deferred_log[-4000:]
    if "dbt's own summary has not arrived" in deferred_log:  # the trigger's: 4 done, slow_model running
        smoke.phases.append("deferred log: the trigger's partial summary")
        assert "dbt summary: 5 nodes" in deferred_log and "(pass=2, running=1, success=2)" in deferred_log, \
            deferred_log[-4000:]
        assert "running when killed: model.demo.slow_model" in deferred_log, deferred_log[-4000:]
    else:  # dbt's own, as in the sync log
        smoke.phases.append("deferred log: dbt's own summary")
        assert "dbt summary: 4 nodes" in deferred_log, deferred_log[-4000:]
