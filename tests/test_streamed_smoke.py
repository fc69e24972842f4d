"""Per-node DAGs under a real scheduler + dag-processor + triggerer + api-server (LocalExecutor, metadata
DB on the suite's PostgreSQL; the stack of test_scheduler_smoke), started once for this module.

- The streamed mode on Airflow 3.3: node tasks are born deferred in the triggerer (``start_from_trigger``)
  and ended there (``end_from_trigger``): no worker ever ran them. The proof is checked against the
  producer task, which did run on a worker, so the check can see what it says is absent.
- Isolated node tasks on one DuckDB file never hit its lock, as rendered (one task at a time) and with
  ``max_active_tasks=4`` (tasks at once, taking turns on the core's lock).
- The mapped layout (one mapped task over the nodes) on Airflow 3.3: every map index is born and ended
  in the triggerer, named after its node by the naming hook (installed as the deployment would, in
  ``airflow_local_settings.py``), with its whole log in its own file; a failing model fails its map
  index and dbt's skip of its child skips that one.
- Cancelling the streamed mode on PostgreSQL mid-``pg_sleep``: marking the producer failed stops dbt and
  fails the waiting node tasks promptly; marking the DAG run failed leaves no dbt process behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dlh_airflow_common.core.stream import stream_dir
from tests.conftest import CANARY, needs_airflow
from tests.pgserver import PgServer, free_port
from tests.processes import dbt_processes, no_dbt_processes
from tests.render_project import SLOW_SECONDS, load_external, make_render_project, make_slow_project
from tests.test_scheduler_smoke import (
    SMOKE_DAGS,
    AirflowStack,
    Smoke,
    _trigger,
    _wait,
    boot,
    shut_down,
    stack_env,
)

META_DB = "airflow_meta_streamed"
STREAMED, STREAMED_PG = "smoke_streamed_dbt", "smoke_streamed_pg"
MAPPED = "smoke_mapped_boom"
SERIAL, PARALLEL = "smoke_nodes_duck", "smoke_nodes_duck_parallel"
PRODUCER = "dbt_producer"
FAILED_BUILDS = "dbt_assets_of_failed_builds"
# Worker traces on a task instance: the scheduler queued it for the executor (queued_dttm), and the task
# runner announced itself to the Execution API (hostname, pid).
WORKER_COLUMNS = "queued_dttm, hostname, pid"
SLEEPING = (f"select pid from pg_stat_activity where query like '%pg_sleep({SLOW_SECONDS})%' "
            "and pid <> pg_backend_pid()")
DUCKDB_LOCK_ERRORS = ("Could not set lock", "Conflicting lock")


@pytest.fixture(scope="module")
def smoke(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smoke]:
    tmp = tmp_path_factory.mktemp("streamed")
    pg.execute(f"drop database if exists {META_DB} with (force)")
    pg.execute(f"create database {META_DB}")
    home, runtime = tmp / "airflow", tmp / "dbt-runtime"
    home.mkdir()
    runtime.mkdir()
    env = stack_env(pg, home, runtime, free_port(), meta_db=META_DB)
    gen = make_render_project(tmp / "gen")
    for name in ("stream", "serial", "parallel", "assets", "mapped"):
        load_external(tmp / f"{name}.duckdb")

    def duck(name: str) -> str:
        return json.dumps({"conn_type": "duckdb", "host": str(tmp / f"{name}.duckdb"), "extra": {"threads": 4}})

    env.update({
        "DLH_SMOKE_STREAMED_DIR": str(gen),
        "DLH_SMOKE_NODES_DIR": str(gen),
        "DLH_SMOKE_SLOW_DIR": str(make_slow_project(tmp / "slow")),
        "AIRFLOW_CONN_SMOKE_STREAM_DUCK": duck("stream"),
        "AIRFLOW_CONN_SMOKE_MAPPED_DUCK": duck("mapped"),
        "AIRFLOW_CONN_SMOKE_NODES_DUCK": duck("serial"),
        "AIRFLOW_CONN_SMOKE_NODES_DUCK_PARALLEL": duck("parallel"),
        "AIRFLOW_CONN_SMOKE_ASSETS_DUCK": duck("assets"),
        "AIRFLOW_CONN_SMOKE_STREAM_PG": json.dumps({
            "conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
            "password": CANARY, "schema": "warehouse", "extra": {"schema": "streamed", "threads": 4}}),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # a cold render runs `dbt ls` (seconds; more on a loaded machine), and one file renders two DAGs
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "180",
        # the one-at-a-time DuckDB DAG and the max_active_tasks=4 one run side by side
        "AIRFLOW__CORE__PARALLELISM": "5",
    })
    # The naming hook, as a deployment installs it (Airflow applies local settings, not plugin policies, there)
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(
        "from dlh_airflow_common.naming import task_instance_mutation_hook  # noqa: F401\n")
    stack = AirflowStack(home, env, int(env["AIRFLOW__API__BASE_URL"].rsplit(":", 1)[1]))
    smoke = Smoke(stack, gen, runtime, home, pg, tmp / "parallel.duckdb", [], meta_db=META_DB)
    started = time.monotonic()
    # The first import of each DAG file renders it with `dbt ls` (seconds per DAG): done here while the
    # metadata DB migrates, so the dag-processor's first parse finds the graphs cached.
    warm = subprocess.Popen([sys.executable, "-c", "import runpy, sys\nfor f in sys.argv[1:]: runpy.run_path(f)",
                             *(str(SMOKE_DAGS / f) for f in ("smoke_streamed_dbt.py", "smoke_nodes_dbt.py"))],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    stack.clis.append(warm)
    try:
        boot(stack, smoke.meta, (STREAMED, STREAMED_PG, SERIAL, PARALLEL, MAPPED))
        out, _ = warm.communicate(timeout=120)
        assert warm.returncode == 0, f"rendering the DAG files failed:\n{out[-3000:]}"
        smoke.phases.append(f"parsed {time.monotonic() - started:.1f}s")
        _wait("the api-server to be healthy", stack.api_healthy, stack, timeout=90)
        yield smoke
    finally:
        survivors = shut_down(smoke, "per-node smoke", started)
    assert not survivors, f"processes survived the stack: {survivors}"


def _run(smoke: Smoke, dag_id: str, run_id: str, timeout: float = 300) -> str:
    """Wait for the DAG run to end; its state."""
    def finished() -> object:
        rows = smoke.meta("select state from dag_run where dag_id = %s and run_id = %s", dag_id, run_id)
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

    return str(_wait(f"{dag_id} {run_id} to finish", finished, smoke.stack, timeout=timeout))


def _states(smoke: Smoke, dag_id: str, run_id: str) -> dict[str, str]:
    return {str(t): str(s) for t, s in smoke.meta(
        "select task_id, state from task_instance where dag_id = %s and run_id = %s", dag_id, run_id)}


def _worker_trace(row: tuple[object, ...], task_dir: Path) -> list[str]:
    """What shows that a worker ran this task instance (empty: none did)."""
    queued, hostname, pid = row
    trace = [f"{name}={value!r}" for name, value in (("queued_dttm", queued), ("hostname", hostname),
                                                      ("pid", pid)) if value]
    # the task runner's own log; the triggerer writes attempt=N.log.trigger.<id>.log next to it
    trace += [p.name for p in task_dir.glob("attempt=*.log") if re.fullmatch(r"attempt=\d+\.log", p.name)]
    return trace


def _task_log_dir(smoke: Smoke, dag_id: str, run_id: str, task_id: str) -> Path:
    return smoke.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"


def _trigger_says(smoke: Smoke, dag_id: str, run_id: str, task_id: str, text: str) -> str:
    """The triggerer's log line of this task holding ``text``, waited for up to 15 s ("" if none).

    Airflow 3.3.2's triggerer writes a trigger's lines to the task's ``*.trigger.*`` log, but when
    several triggers fire at the same moment, the last lines of some reach only the triggerer's own
    output (seen here): both are read, the line there tagged with the task.
    """
    task_dir = _task_log_dir(smoke, dag_id, run_id, task_id)
    tag = f"task_id={task_id} "
    deadline = time.monotonic() + 15
    while True:
        lines = [line for p in sorted(task_dir.glob("*.trigger.*"))
                 for line in p.read_text(errors="replace").splitlines()]
        lines += [line for line in (smoke.stack.logs / "triggerer.log").read_text(errors="replace").splitlines()
                  if tag in line and f"dag_id={dag_id} " in line and f"run_id={run_id} " in line]
        found = next((line for line in lines if text in line), "")
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _trigger_started(smoke: Smoke, dag_id: str, run_id: str, task_id: str) -> bool:
    """The triggerer runs this task's trigger. A task is "deferred" before then, and one marked failed
    in between never gets ``on_kill`` (its run stops only after ``unwatched_timeout``, as the README
    says): a warm dbt reaches pg_sleep within a second, often before the triggerer's next loop."""
    task_dir = _task_log_dir(smoke, dag_id, run_id, task_id)
    return any(") starting" in p.read_text(errors="replace") for p in task_dir.glob("*.trigger.*"))


def test_streamed_nodes_run_without_a_worker(smoke: Smoke) -> None:
    run_id = "streamed_run"
    _trigger(smoke, STREAMED, run_id)
    state = _run(smoke, STREAMED, run_id)
    smoke.phases.append(f"streamed run {_duration(smoke, STREAMED, run_id):.1f}s")
    rows = {str(r[0]): r[1:] for r in smoke.meta(
        f"select task_id, state, try_number, {WORKER_COLUMNS} from task_instance where dag_id = %s "
        "and run_id = %s", STREAMED, run_id)}
    assert state == "success", f"DAG run ended {state}: {rows}\n{smoke.stack.report()}"
    assert rows.pop(FAILED_BUILDS)[0] == "skipped", rows  # nothing failed: skipped by the scheduler
    nodes = sorted(set(rows) - {PRODUCER})
    assert len(nodes) >= 10, rows  # every dbt node of the generated project has its task
    assert {t: r for t, r in rows.items() if r[0] != "success"} == {}, rows

    run_dir = smoke.home / "logs" / f"dag_id={STREAMED}" / f"run_id={run_id}"
    # The check sees a worker where there was one: the producer ran on a worker.
    assert _worker_trace(rows[PRODUCER][2:], run_dir / f"task_id={PRODUCER}"), rows[PRODUCER]
    for task in nodes:
        assert not _worker_trace(rows[task][2:], run_dir / f"task_id={task}"), f"{task} ran on a worker: {rows[task]}"
        assert rows[task][1] == 1, (task, rows[task])  # one try, no reschedule
        # born in the triggerer and ended there: its only log is the triggerer's
        assert _trigger_says(smoke, STREAMED, run_id, task, " built ("), f"no success in the triggerer log of {task}"
    triggerer_log = (smoke.stack.logs / "triggerer.log").read_text(errors="replace")
    assert "Start from trigger enabled" in triggerer_log, "\n".join(triggerer_log.splitlines()[-60:])


@needs_airflow("3.3")  # a mapped task starts in the triggerer from Airflow 3.3 on
def test_mapped_nodes_are_born_and_ended_in_the_triggerer_named_and_logged(smoke: Smoke) -> None:
    run_id = "mapped_run"
    _trigger(smoke, MAPPED, run_id)
    state = _run(smoke, MAPPED, run_id)
    smoke.phases.append(f"mapped run {_duration(smoke, MAPPED, run_id):.1f}s")
    rows = smoke.meta(f"select task_id, map_index, rendered_map_index, state, try_number, {WORKER_COLUMNS} "
                      "from task_instance where dag_id = %s and run_id = %s", MAPPED, run_id)
    run_dir = smoke.home / "logs" / f"dag_id={MAPPED}" / f"run_id={run_id}"
    producer = next(r for r in rows if r[0] == PRODUCER)
    assert _worker_trace(producer[5:], run_dir / f"task_id={PRODUCER}"), producer  # the check sees a worker
    nodes = {str(r[2]): r for r in rows if r[0] == "dbt_nodes"}
    assert state == "failed" and producer[3] == "failed", f"{state}: {rows}\n{smoke.stack.report()}"
    assert len(nodes) == 11 and "model.boom" in nodes, sorted(nodes)  # named by the hook, not 0..10
    states = {name: r[3] for name, r in nodes.items()}
    assert states.pop("model.boom") == "failed" and states.pop("model.boom_child") == "skipped", states
    assert set(states.values()) == {"success"}, states
    ended = {"failed": "model.gen.boom error", "skipped": "dbt skipped model.gen.boom_child", "success": " built ("}
    for name, (_, index, _, node_state, tries, *worker) in nodes.items():
        task_dir = run_dir / "task_id=dbt_nodes" / f"map_index={index}"
        assert not _worker_trace(tuple(worker), task_dir), f"{name} ran on a worker: {nodes[name]}"
        assert tries == 1, (name, tries)
        # its own log has every line its trigger wrote, the last one (its outcome) included
        own = "\n".join(p.read_text(errors="replace") for p in task_dir.glob("*.trigger.*"))
        assert f"Map index {index} is " in own and ended[str(node_state)] in own, f"{name}:\n{own[-3000:]}"
        # its "dbt Docs" link opens its node (the trigger stored it: no worker computed it)
        links = smoke.api("GET", f"/api/v2/dags/{MAPPED}/dagRuns/{run_id}/taskInstances/dbt_nodes/links"
                          f"?map_index={index}")["extra_links"]
        # the hook's label drops the package (model.boom is model.gen.boom) and a generic test's hash
        kind, short = name.split(".", 1)
        page = rf"/dbt-docs/gen/#!/{kind}/{kind}\.gen\.{re.escape(short)}(\.\w+)?"
        assert re.search(page + "$", str(links["dbt Docs"])), (name, links)

    # Clearing one map index builds that node alone, on a worker (the other map indexes stay as they were)
    index = nodes["model.mart_2"][1]
    smoke.api("POST", f"/api/v2/dags/{MAPPED}/clearTaskInstances", {
        "dag_run_id": run_id, "task_ids": [["dbt_nodes", index]], "dry_run": False, "only_failed": False})

    def rebuilt() -> object:
        rows = smoke.meta("select state, try_number from task_instance where dag_id = %s and run_id = %s and "
                          "task_id = 'dbt_nodes' and map_index = %s", MAPPED, run_id, index)
        return rows[0] if rows and rows[0][0] in ("success", "failed") and rows[0][1] == 2 else None

    assert _wait("the cleared map index to end", rebuilt, smoke.stack, timeout=180) == ("success", 2)
    again = {str(r[0]): (r[1], r[2]) for r in smoke.meta(
        "select rendered_map_index, state, try_number from task_instance where dag_id = %s and run_id = %s "
        "and task_id = 'dbt_nodes'", MAPPED, run_id)}
    assert {n: s for n, (s, t) in again.items() if t != 1} == {"model.mart_2": "success"}, again
    task_dir = run_dir / "task_id=dbt_nodes" / f"map_index={index}"
    worker_log = (task_dir / "attempt=2.log").read_text(errors="replace")  # a worker ran try 2
    said = _trigger_log(task_dir, 2)  # the triggerer sent try 2 to a worker at once
    assert f"try 2: this task builds the node at map index {index} itself" in said, said
    # mart_2 and the test that runs with it, nothing else
    assert "dbt summary: 2 nodes in" in worker_log and "mart_2" in worker_log, worker_log[-3000:]
    smoke.phases.append("a cleared map index rebuilt its node alone")


def _trigger_log(task_dir: Path, attempt: int) -> str:
    return "\n".join(p.read_text(errors="replace") for p in task_dir.glob(f"attempt={attempt}.log.trigger.*"))


def _duration(smoke: Smoke, dag_id: str, run_id: str) -> float:
    start, end = smoke.meta("select start_date, end_date from dag_run where dag_id = %s and run_id = %s",
                            dag_id, run_id)[0]
    assert isinstance(start, datetime) and isinstance(end, datetime)
    return (end - start).total_seconds()


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The largest number of task instances running at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_duckdb_node_tasks_never_hit_the_lock(smoke: Smoke) -> None:
    """Isolated node tasks on DuckDB, as rendered (one at a time) and with max_active_tasks=4."""
    run_id = "duck_run"
    for dag_id in (SERIAL, PARALLEL):  # side by side: one stack, one wait
        _trigger(smoke, dag_id, run_id)
    ended = {dag_id: _run(smoke, dag_id, run_id) for dag_id in (SERIAL, PARALLEL)}
    smoke.phases.append(" ".join(f"{d} {_duration(smoke, d, run_id):.1f}s" for d in (SERIAL, PARALLEL)))
    waits: dict[str, int] = {}
    for dag_id in (SERIAL, PARALLEL):
        rows = smoke.meta("select task_id, state, start_date, end_date from task_instance where dag_id = %s "
                          "and run_id = %s", dag_id, run_id)
        assert ended[dag_id] == "success" and {r[1] for r in rows} == {"success"}, \
            f"{dag_id}: {rows}\n{smoke.stack.report()}"
        spans = [(r[2], r[3]) for r in rows]
        at_once = _most_at_once(spans)  # type: ignore[arg-type]
        waits[dag_id] = 0
        for task_id, *_ in rows:
            log = smoke.task_log(dag_id, run_id, str(task_id))
            assert "dbt summary:" in log, f"{dag_id}.{task_id}: no dbt output in its log\n{log[-2000:]}"
            assert not [e for e in DUCKDB_LOCK_ERRORS if e in log], f"{dag_id}.{task_id}\n{log[-4000:]}"
            waits[dag_id] += log.count("Waiting for DuckDB file")
        smoke.phases.append(f"{dag_id}: {len(rows)} tasks, at most {at_once} at once, {waits[dag_id]} lock waits")
        if dag_id == SERIAL:
            assert at_once == 1, f"the default DuckDB DAG ran tasks side by side: {rows}"
        else:
            assert at_once >= 2, f"max_active_tasks=4 never ran two tasks at once: {rows}"
    # the tasks running at once really contended for the file, and took turns on the core's lock
    assert waits[PARALLEL] >= 1 and waits[SERIAL] == 0, waits


def _mark_failed_mid_sleep(smoke: Smoke, run_id: str, what: str, body: dict[str, str]) -> tuple[float, float]:
    """Run the slow streamed DAG, mark ``what`` (a REST path under the run) failed while dbt is in
    pg_sleep, and wait until no dbt process, query, run dir or control dir is left.

    Returns when the kill was sent (monotonic) and how many seconds later dbt was gone.
    """
    _trigger(smoke, STREAMED_PG, run_id)

    def sleeping() -> bool:  # dbt in pg_sleep, the producer and the slow node tasks in the triggerer
        states = _states(smoke, STREAMED_PG, run_id)
        return bool(smoke.pg.execute(SLEEPING)) and all(
            states.get(t) == "deferred" for t in (PRODUCER, "model.slow", "model.slow_child")) and all(
            _trigger_started(smoke, STREAMED_PG, run_id, t) for t in (PRODUCER, "model.slow"))

    _wait("dbt to be in pg_sleep", sleeping, smoke.stack, timeout=240)
    # What the kill must remove, seen first: dbt running, its run dir, the producer's control dir.
    assert dbt_processes(smoke.runtime), "the helper sees no dbt process while dbt runs"
    assert [p for p in (smoke.runtime / "runs").iterdir() if STREAMED_PG in p.name]
    assert stream_dir(smoke.runtime, STREAMED_PG, run_id).is_dir()

    killed = time.monotonic()
    smoke.api("PATCH", f"/api/v2/dags/{STREAMED_PG}/dagRuns/{run_id}{what}", body)
    assert no_dbt_processes(smoke.runtime, 60), f"{dbt_processes(smoke.runtime)}\n{smoke.stack.report()}"
    gone = time.monotonic() - killed
    _wait("the sleeping query to end", lambda: not smoke.pg.execute(SLEEPING), smoke.stack, timeout=15,
          interval=0.2)
    _wait("run and control dirs to be removed",
          lambda: not [p for p in (smoke.runtime / "runs").iterdir() if STREAMED_PG in p.name]
          and not stream_dir(smoke.runtime, STREAMED_PG, run_id).exists(), smoke.stack, timeout=20)
    return killed, gone


@needs_airflow("3.3")  # the triggerer calls a trigger's on_kill from Airflow 3.3 on
def test_marking_the_producer_failed_stops_dbt_and_fails_waiting_nodes(smoke: Smoke) -> None:
    run_id = "cancel_producer"
    killed, gone = _mark_failed_mid_sleep(smoke, run_id, f"/taskInstances/{PRODUCER}", {"new_state": "failed"})

    def nodes_failed() -> bool:
        states = _states(smoke, STREAMED_PG, run_id)
        return states.get("model.slow") == "failed" and states.get("model.slow_child") == "failed"

    _wait("the waiting node tasks to fail", nodes_failed, smoke.stack, timeout=150, interval=0.2)
    failed = time.monotonic() - killed
    smoke.phases.append(f"producer marked failed: dbt gone {gone:.1f}s, node tasks failed {failed:.1f}s")
    states = _states(smoke, STREAMED_PG, run_id)
    assert states[PRODUCER] == "failed" and states["model.fast_a"] == "success", states
    for task in ("model.slow", "model.slow_child"):
        said = _trigger_says(smoke, STREAMED_PG, run_id, task, "The producer run was cancelled")
        assert f"see the log of task {PRODUCER}" in said, f"{task}: {said!r}\n{smoke.stack.report()}"
    # promptly: well within the 120 s a silent producer gets before its node tasks give up on it
    assert failed < 60, f"the node tasks took {failed:.1f}s to fail"


@needs_airflow("3.3")
def test_marking_the_dag_run_failed_leaves_no_dbt_process(smoke: Smoke) -> None:
    run_id = "fail_run"
    _, gone = _mark_failed_mid_sleep(smoke, run_id, "", {"state": "failed"})
    smoke.phases.append(f"DAG run marked failed: dbt gone {gone:.1f}s")
    states = _states(smoke, STREAMED_PG, run_id)
    assert states[PRODUCER] == "failed" and states["model.slow"] in ("failed", "skipped"), states


def test_a_dag_scheduled_on_a_model_runs_after_it_was_built_and_not_after_it_failed(smoke: Smoke) -> None:
    """Under the real scheduler: a run where the model fails emits no event for it and wakes nobody; a run
    that builds it emits its event, and the DAG scheduled on its asset runs (proving the check can see it)."""
    consumer = "smoke_assets_consumer"
    events = ("select e.source_run_id, e.source_task_id from asset_event e join asset a on a.id = e.asset_id "
              "where a.uri like '%%/boom' and e.source_dag_id like 'smoke_assets_%%' order by e.id")
    _trigger(smoke, "smoke_assets_boom", "boom")
    assert _run(smoke, "smoke_assets_boom", "boom") == "failed"
    assert _states(smoke, "smoke_assets_boom", "boom")["model.boom"] == "failed"
    assert smoke.meta(events) == []
    _trigger(smoke, "smoke_assets_ok", "ok")
    assert _run(smoke, "smoke_assets_ok", "ok") == "success", smoke.stack.report()
    assert smoke.meta(events) == [("ok", "model.boom")]

    def consumer_runs() -> list[tuple[object, ...]]:
        return smoke.meta("select run_id, run_type, state from dag_run where dag_id = %s", consumer)

    _wait("the consumer's asset-triggered run", lambda: any(r[2] == "success" for r in consumer_runs()),
          smoke.stack, timeout=120)
    time.sleep(3)  # one event, one run: nothing else queued behind it
    runs = consumer_runs()
    assert len(runs) == 1 and runs[0][1] == "asset_triggered", runs
