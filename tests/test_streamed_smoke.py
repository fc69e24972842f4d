"""Smoke test of the streamed per-node mode under a real scheduler + dag-processor + triggerer +
api-server (LocalExecutor, metadata DB on the suite's PostgreSQL; the stack of test_scheduler_smoke).

Proves that on Airflow 3.3 the node tasks are born deferred in the triggerer (``start_from_trigger``)
and ended there (``end_from_trigger``): no worker ever ran them. The proof is checked against the
producer task, which did run on a worker, so the check can see what it says is absent.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.pgserver import PgServer, free_port
from tests.render_project import load_external, make_render_project
from tests.test_scheduler_smoke import AirflowStack, _wait, stack_env

META_DB = "airflow_meta_streamed"

DAG_ID = "smoke_streamed_dbt"
RUN_ID = "streamed_run"
PRODUCER = "dbt_producer"
# Worker traces on a task instance: the scheduler queued it for the executor (queued_dttm), and the task
# runner announced itself to the Execution API (hostname, pid).
WORKER_COLUMNS = "queued_dttm, hostname, pid"
WHERE = f"dag_id = '{DAG_ID}' and run_id = '{RUN_ID}'"


def _worker_trace(row: tuple[object, ...], task_dir: Path) -> list[str]:
    """What shows that a worker ran this task instance (empty: none did)."""
    queued, hostname, pid = row
    trace = [f"{name}={value!r}" for name, value in (("queued_dttm", queued), ("hostname", hostname),
                                                      ("pid", pid)) if value]
    # the task runner's own log; the triggerer writes attempt=N.log.trigger.<id>.log next to it
    trace += [p.name for p in task_dir.glob("attempt=*.log") if re.fullmatch(r"attempt=\d+\.log", p.name)]
    return trace


def test_streamed_nodes_run_without_a_worker(pg: PgServer, tmp_path: Path) -> None:
    pg.execute(f"drop database if exists {META_DB} with (force)")
    pg.execute(f"create database {META_DB}")
    (tmp_path / "airflow").mkdir()
    (tmp_path / "dbt-runtime").mkdir()
    env = stack_env(pg, tmp_path / "airflow", tmp_path / "dbt-runtime", free_port(), meta_db=META_DB)
    project = make_render_project(tmp_path / "gen")
    load_external(tmp_path / "stream.duckdb")
    env["DLH_SMOKE_STREAMED_DIR"] = str(project)
    env["AIRFLOW_CONN_SMOKE_STREAM_DUCK"] = json.dumps(
        {"conn_type": "duckdb", "host": str(tmp_path / "stream.duckdb"), "extra": {"threads": 4}})
    home = Path(env["AIRFLOW_HOME"])
    stack = AirflowStack(home, env, int(env["AIRFLOW__API__BASE_URL"].rsplit(":", 1)[1]))
    started = time.monotonic()
    try:
        migrate = stack.cli("db", "migrate", timeout=300)
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        stack.start("api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(stack.api_port),
                    "--workers", "1")
        stack.start("scheduler", "--skip-serve-logs")
        stack.start("dag-processor")
        stack.start("triggerer", "--skip-serve-logs")

        def parsed() -> bool:
            errors = pg.execute("select filename, stacktrace from import_error", META_DB)
            if errors:
                pytest.fail(f"DAG import errors: {errors}\n{stack.report()}")
            return bool(pg.execute(f"select 1 from serialized_dag where dag_id = '{DAG_ID}'", META_DB))

        _wait(f"{DAG_ID} to be parsed", parsed, stack, timeout=180)
        clis = [stack.cli_start(*args) for args in (("dags", "unpause", DAG_ID),
                                                     ("dags", "trigger", DAG_ID, "-r", RUN_ID))]
        _wait("the api-server to be healthy", stack.api_healthy, stack, timeout=60)
        for proc in clis:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{out}"

        def finished() -> object:
            rows = pg.execute(f"select state from dag_run where {WHERE}", META_DB)
            return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

        state = _wait("the DAG run to finish", finished, stack, timeout=300)
        rows = {r[0]: r[1:] for r in pg.execute(
            f"select task_id, state, try_number, {WORKER_COLUMNS} from task_instance where {WHERE}", META_DB)}
        assert state == "success", f"DAG run ended {state}: {rows}\n{stack.report()}"
        nodes = sorted(set(rows) - {PRODUCER})
        assert len(nodes) >= 10, rows  # every dbt node of the generated project has its task
        assert {t: r for t, r in rows.items() if r[0] != "success"} == {}, rows

        run_dir = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={RUN_ID}"
        # The check sees a worker where there was one: the producer ran (and resumed) on a worker.
        assert _worker_trace(rows[PRODUCER][2:], run_dir / f"task_id={PRODUCER}"), rows[PRODUCER]
        for task in nodes:
            task_dir = run_dir / f"task_id={task}"
            assert not _worker_trace(rows[task][2:], task_dir), f"{task} ran on a worker: {rows[task]}"
            assert rows[task][1] == 1, (task, rows[task])  # one try, no reschedule
            # born in the triggerer and ended there: its only log is the triggerer's
            trigger_log = "\n".join(p.read_text(errors="replace") for p in task_dir.glob("*.trigger.*"))
            assert " built (" in trigger_log, f"no success in the triggerer log of {task}: " \
                f"{sorted(p.name for p in task_dir.iterdir())}\n{trigger_log[-2000:]}"
        triggerer_log = (stack.logs / "triggerer.log").read_text(errors="replace")
        assert "Start from trigger enabled" in triggerer_log, _tail_of(triggerer_log)
    finally:
        survivors = stack.stop()
        print(f"streamed smoke: {time.monotonic() - started:.1f}s")
    assert not survivors, f"processes survived the test: {survivors}"


def _tail_of(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])
