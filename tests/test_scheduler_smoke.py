"""Smoke test: a real Airflow scheduler + dag-processor + triggerer + api-server (LocalExecutor, metadata
DB on the suite's PostgreSQL) runs one deferrable DbtOperator to success.

Everything is started and stopped here, in child processes with their own AIRFLOW_HOME, so the test
process's Airflow configuration is untouched. The DAG is tests/smoke_dags/smoke_deferrable_dbt.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common._compat import airflow_at_least
from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig
from tests.conftest import EXAMPLES, REPO
from tests.pgserver import PgServer, free_port
from tests.processes import dbt_processes, no_dbt_processes, pids_with_env

DAG_ID = "smoke_deferrable_dbt"
TASK_ID = "dbt_build"
SMOKE_DAGS = REPO / "tests" / "smoke_dags"
META_DB = "airflow_meta"


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text[-lines:])


class AirflowStack:
    """The Airflow components as child processes, each in its own process group with a log file."""

    def __init__(self, home: Path, env: dict[str, str], api_port: int) -> None:
        self.home = home
        self.env = env
        self.api_port = api_port
        self.logs = home / "component-logs"
        self.logs.mkdir(parents=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.clis: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_airflow(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def cli_start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(_airflow(*args), env=self.env, stdin=subprocess.DEVNULL, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.clis.append(proc)
        return proc

    def start(self, name: str, *args: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                _airflow(name, *args), env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def dead(self) -> list[str]:
        return [f"{name} (rc={p.returncode})" for name, p in self.procs.items() if p.poll() is not None]

    def api_healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.api_port}/execution/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def report(self) -> str:
        parts = [f"dead components: {self.dead() or 'none'}"]
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {path.name} (tail) -----\n{_tail(path)}")
        for path in sorted((self.home / "logs").rglob("*.log*")):
            if "dag_id=" in str(path):
                parts.append(f"----- {path.relative_to(self.home)} (tail) -----\n{_tail(path, 30)}")
        return "\n".join(parts)

    def stop(self) -> list[int]:
        """SIGTERM every group, wait, SIGKILL what is left, then any descendant that left its group.

        Returns the pids still alive afterwards (none expected).
        """
        procs: list[subprocess.Popen[Any]] = [*self.procs.values(), *self.clis]
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Anything that started its own session (a detached dbt run, a task process) still carries our
        # unique AIRFLOW_HOME in its environment.
        deadline = time.monotonic() + 10
        while (left := pids_with_env(f"AIRFLOW_HOME={self.home}")) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return left


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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


@pytest.fixture
def smoke_env(pg: PgServer, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """Child-process environment: fresh AIRFLOW_HOME, metadata DB on the test PostgreSQL."""
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
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "DLH_", "DBT_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://postgres:{pg.password}@127.0.0.1:{pg.port}/{META_DB}",
        # Airflow derives postgresql+asyncpg from the sync URL itself; stated here to be explicit.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
            f"postgresql+asyncpg://postgres:{pg.password}@127.0.0.1:{pg.port}/{META_DB}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(SMOKE_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
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
        "DLH_SMOKE_PROJECT_DIR": str(project),
        "AIRFLOW_CONN_SMOKE_DUCK": json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "smoke.duckdb")}),
    })
    yield env, project, runtime
    pg.execute(f"drop database if exists {META_DB} with (force)")


def test_scheduler_triggerer_run_deferrable_dbt(pg: PgServer, smoke_env: tuple[dict[str, str], Path, Path],
                                                tmp_path: Path) -> None:
    env, project, runtime = smoke_env
    stack = AirflowStack(Path(env["AIRFLOW_HOME"]),
                         env, int(env["AIRFLOW__API__BASE_URL"].rsplit(":", 1)[1]))

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

    def meta(sql: str, *params: object) -> list[tuple[object, ...]]:
        import psycopg2

        conn = psycopg2.connect(pg.dsn(META_DB))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    started = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - started:.1f}s")

    try:
        migrate = stack.cli("db", "migrate", timeout=300)
        assert migrate.returncode == 0, f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"

        phase("migrated")
        # Only the Task Execution API: workers need it; the CLI calls below go to the DB directly.
        stack.start("api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(stack.api_port),
                    "--workers", "1")
        stack.start("scheduler", "--skip-serve-logs")
        stack.start("dag-processor")
        stack.start("triggerer", "--skip-serve-logs")

        def parsed() -> bool:
            errors = meta("select filename, stacktrace from import_error")
            if errors:
                pytest.fail(f"DAG import errors: {errors}\n{stack.report()}")
            return bool(meta("select 1 from serialized_dag where dag_id = %s", DAG_ID))

        _wait(f"{DAG_ID} to be parsed", parsed, stack, timeout=120)
        phase("parsed")
        deps_thread.join(timeout=120)
        assert not deps_thread.is_alive(), "dbt deps did not finish"
        assert not deps_error, f"dbt deps failed: {deps_error[0]!r}"
        # Each CLI call costs seconds of imports: unpause and trigger at once, while the api-server
        # comes up (a run triggered on a paused DAG just waits queued until the unpause lands).
        clis = [stack.cli_start(*args) for args in (("dags", "unpause", DAG_ID),
                                                     ("dags", "trigger", DAG_ID, "-r", "smoke_run"))]
        _wait("the api-server to be healthy", stack.api_healthy, stack, timeout=60)
        phase("api up")
        for proc in clis:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{out}"
        phase("triggered")

        def finished() -> object:
            rows = meta("select state from dag_run where dag_id = %s and run_id = 'smoke_run'", DAG_ID)
            return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

        state = _wait("the DAG run to finish", finished, stack, timeout=240)
        phase("finished")
        assert state == "success", f"DAG run ended {state}\n{stack.report()}"
        ti = meta("select state, try_number from task_instance where dag_id = %s and run_id = 'smoke_run' "
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

        with duckdb.connect(str(tmp_path / "smoke.duckdb"), read_only=True) as db:
            built = db.execute("select table_name from information_schema.tables").fetchall()
        assert ("customer_orders",) in built, built
        # The detached dbt run and its supervisor are gone once the task is done, not at teardown.
        assert no_dbt_processes(runtime, 30), dbt_processes(runtime)
    finally:
        survivors = stack.stop()
        phase("stopped")
        print("scheduler smoke phases:", ", ".join(phases))
    assert not survivors, f"processes survived the test: {survivors}"
