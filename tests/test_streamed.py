"""Streamed per-node mode: one producer dbt build, node tasks that reflect its streamed results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CANARY, REPO
from tests.pgserver import PgServer
from tests.trigger_events import first_event_after

DAG_FILE = REPO / "tests" / "dags" / "streamed_dbt_dags.py"
RUNTIME = Path(os.environ["DLH_DBT_RUNTIME_ROOT"])
NODE_TASKS = {"seed.raw_events", "test.relationships_mart_2_id__id__ref_stg_a_",
              *(f"model.{n}" for n in ("stg_events", "stg_a", "stg_b", "int_x", "mart_1", "mart_2", "boom",
                                       "boom_child", "flaky"))}


@pytest.fixture(scope="module")
def bag(airflow_db: None, pg: PgServer) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    pg.execute("drop database if exists streamed with (force)")
    pg.execute("create database streamed owner dbt_user")
    os.environ["AIRFLOW_CONN_RENDER_PG"] = json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
         "password": CANARY, "schema": "streamed", "extra": {"schema": "gen", "threads": 4}})
    pg.execute("create schema main authorization dbt_user", dbname="streamed")
    pg.execute("create table main.ext_events as select 1 as id, 'a' as kind, "
               "timestamp '2026-11-01' as loaded_at", dbname="streamed")
    pg.execute("alter table main.ext_events owner to dbt_user", dbname="streamed")
    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def _run_dirs(dag_id: str) -> list[str]:
    """Run dirs of this DAG (``run_<YYYYmmdd>_<HHMMSS>_<dag>_...``: not of a DAG whose id merely contains it)."""
    return sorted(p.name for p in RUNTIME.glob(f"runs/run_{'?' * 8}_{'?' * 6}_{dag_id}_*"))


@pytest.mark.parametrize("dag_id", ["streamed_duck", "streamed_pg"])
def test_one_dbt_build_and_every_node_task_mirrors_its_node(bag: Any, dag_id: str) -> None:
    dag = bag.get_dag(dag_id)
    assert set(dag.task_dict) == NODE_TASKS | {"dbt_producer", "dbt_assets_of_failed_builds"}
    assert all(dag.task_dict[t].start_from_trigger for t in NODE_TASKS)  # born in the triggerer (3.3)
    dr = dag.test()
    states = _states(dr)
    assert dr.state == "success", states
    assert states.pop("dbt_assets_of_failed_builds") == "skipped"  # nothing failed: no teardown work
    assert set(states.values()) == {"success"}
    # one dbt process built everything: the only run dir of this DAG is the producer's
    runs = _run_dirs(dag_id)
    assert len(runs) == 1 and "_dbt_producer_" in runs[0], runs


def test_a_failing_node_fails_its_task_and_dbt_skips_its_child(bag: Any) -> None:
    dag = bag.get_dag("streamed_duck_boom")
    # the producer is a leaf (besides the teardown): its failed build fails the DAG run
    assert dag.task_dict["dbt_producer"].downstream_task_ids == {"dbt_assets_of_failed_builds"}
    dr = dag.test()
    states = _states(dr)
    # boom's only child is a leaf that dbt skipped: the run fails through the producer, not a leaf node
    assert dr.state == "failed", states
    assert states["model.boom"] == "failed"
    assert states["model.boom_child"] == "skipped"  # dbt skipped it: its upstream failed
    assert states["model.mart_1"] == "success" and states["model.flaky"] == "success"
    assert states["dbt_producer"] == "failed"  # the build as a whole failed


def test_a_retry_of_the_failed_node_builds_it_by_itself(bag: Any) -> None:
    flaky_csv = Path(os.environ["DLH_RENDER_PROJECT_DIR"]).parent / "flaky_streamed.csv"
    flaky_csv.unlink(missing_ok=True)
    dr = bag.get_dag("streamed_duck_flaky").test()
    states = _states(dr)
    assert states["model.flaky"] == "success", states
    assert dr.get_task_instance("model.flaky").try_number == 2
    assert states["model.mart_1"] == "success" and dr.get_task_instance("model.mart_1").try_number == 1
    runs = _run_dirs("streamed_duck_flaky")
    assert any("_model_flaky_try2_" in r for r in runs), runs  # the retry ran dbt for that node only


# -- the trigger's decisions on a control dir it can see ------------------------------------------
def _control_dir(tmp_path: Path, *, state: str, heartbeat: float, results: list[dict[str, Any]]) -> Path:
    from dlh_airflow_common.core.stream import stream_dir

    home = stream_dir(tmp_path, "d", "r")
    path = home / "run_1"
    path.mkdir(parents=True)
    (home / "current").symlink_to(path.name)
    (path / "status.json").write_text(json.dumps({"state": state, "heartbeat": heartbeat, "launched": 1.0,
                                                  "host": "h", "pid": 1}))
    (path / "nodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    return path


def _first_event(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    import asyncio

    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    trigger = DbtNodeTrigger(runtime_root=str(tmp_path), end_task=False, dag_id="d", run_id="r", try_number=1,
                             poll_interval=0.05, **kw)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(first(), 20))


def _row(uid: str, status: str, message: str = "") -> dict[str, Any]:
    return {"unique_id": uid, "status": status, "message": message, "execution_time": 0.5,
            "rows_affected": 3, "path": "models/x.sql"}


def test_trigger_outcomes(tmp_path: Path) -> None:
    now = time.time()
    _control_dir(tmp_path, state="running", heartbeat=now, results=[
        _row("model.p.a", "success"), _row("test.p.t", "warn", "1 row"),
        _row("model.p.b", "error", "relation does not exist"), _row("model.p.c", "skipped")])
    assert _first_event(tmp_path, unique_id="model.p.a", tests=["test.p.t"])["outcome"] == "success"
    failed = _first_event(tmp_path, unique_id="model.p.b")
    assert failed["outcome"] == "failed" and "relation does not exist" in failed["message"]
    assert "models/x.sql" in failed["message"]
    assert _first_event(tmp_path, unique_id="model.p.c")["outcome"] == "skipped"


def test_trigger_when_the_producer_ends_without_the_node_or_dies(tmp_path: Path) -> None:
    _control_dir(tmp_path / "done", state="success", heartbeat=time.time(), results=[])
    assert _first_event(tmp_path / "done", unique_id="model.p.x")["outcome"] == "run_itself"
    _control_dir(tmp_path / "cancel", state="cancelled", heartbeat=time.time(), results=[])
    cancelled = _first_event(tmp_path / "cancel", unique_id="model.p.x")
    assert cancelled["outcome"] == "failed" and "cancelled" in cancelled["message"]
    path = _control_dir(tmp_path / "dead", state="running", heartbeat=time.time() - 600, results=[])
    dead = _first_event(tmp_path / "dead", unique_id="model.p.x", heartbeat_timeout=5)
    assert dead["outcome"] == "failed" and str(path / "progress.log") in dead["message"]


def test_trigger_fails_promptly_when_the_producer_is_cancelled(tmp_path: Path) -> None:
    """A cancel is marked before dbt stops; a killed producer's dir vanishes: no wait for a heartbeat."""
    import shutil

    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    now = time.time()
    path = _control_dir(tmp_path / "asked", state="running", heartbeat=now, results=[
        _row("model.p.cut", "error", "server closed the connection unexpectedly")])
    status = json.loads((path / "status.json").read_text())
    (path / "status.json").write_text(json.dumps({**status, "cancel_requested": now}))
    waiting = _first_event(tmp_path / "asked", unique_id="model.p.x")
    assert waiting["outcome"] == "failed" and "cancelled before it built model.p.x" in waiting["message"]
    cut = _first_event(tmp_path / "asked", unique_id="model.p.cut")  # not the node's own failure
    assert cut["outcome"] == "failed" and "cancelled while building model.p.cut" in cut["message"]

    path = _control_dir(tmp_path / "killed", state="running", heartbeat=now, results=[])
    trigger = DbtNodeTrigger(unique_id="model.p.x", runtime_root=str(tmp_path / "killed"), end_task=False,
                             dag_id="d", run_id="r", try_number=1, poll_interval=0.05)

    # removed once the trigger has seen the dir
    gone, after = first_event_after(trigger, 0.3, lambda: shutil.rmtree(path), 30)
    assert gone["outcome"] == "failed" and "cancelled before it built" in gone["message"]
    assert after < 10, after  # not the 120 s heartbeat timeout


def test_triggers_starting_while_the_shared_reader_polls_never_see_a_half_read_stream(tmp_path: Path) -> None:
    """The reader polls in a thread; a trigger starting meanwhile must not see "finished" without the
    results read in the same poll (seen at 500 models: such a task rebuilt its node on a worker)."""
    import asyncio

    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    uids = [f"model.p.m{i}" for i in range(20000)]
    _control_dir(tmp_path, state="success", heartbeat=time.time(), results=[_row(u, "success") for u in uids])

    async def outcomes() -> list[str]:
        async def one(uid: str) -> str:
            trigger = DbtNodeTrigger(unique_id=uid, runtime_root=str(tmp_path), end_task=False, dag_id="d",
                                     run_id="r", try_number=1, poll_interval=0.05)
            async for event in trigger.run():
                return str(event.payload["outcome"])
            raise AssertionError("no event")

        tasks = []
        for uid in uids[-300:]:  # started one by one while the first poll folds 20,000 lines
            tasks.append(asyncio.create_task(one(uid)))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    results = asyncio.run(asyncio.wait_for(outcomes(), 60))
    assert results.count("success") == len(results), sorted(set(results))


def test_a_trigger_started_in_the_triggerer_lets_go_of_its_copy_of_the_dag() -> None:
    """Airflow 3.3 hands each start_from_trigger trigger a task instance and context built from its own
    deserialized copy of the whole DAG; N node triggers must not keep N copies alive."""
    import gc
    import uuid
    import weakref
    from datetime import UTC, datetime

    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from dlh_airflow_common.operators.dbt import DbtOperator
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    common: dict[str, Any] = {"command": "build", "dbt_project_dir": "/p", "conn_id": "c"}
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        DbtOperator(task_id="dbt_producer", stream_nodes=True, **common)
        DbtOperator(task_id="n", dbt_unique_id="model.p.n", stream_from="dbt_producer", **common)
    now = datetime.now(UTC)
    ti = TaskInstanceDTO(id=uuid.uuid4(), task_id="n", dag_id="d", run_id="r", try_number=1, map_index=-1,
                         dag_version_id=uuid.uuid4(), pool_slots=1, priority_weight=1, queue="default")
    run = {"dag_id": "d", "run_id": "r", "logical_date": now, "data_interval_start": now,
           "data_interval_end": now, "run_after": now, "start_date": now, "end_date": None, "run_type": "manual",
           "state": "running", "conf": {}, "consumed_asset_events": [], "partition_key": None, "clear_number": 0}
    runtime_ti = TriggerRunner.create_runtime_ti(ti, DagSerialization.to_dict(dag), run)  # as the triggerer does
    context = runtime_ti.get_template_context()
    trigger = DbtNodeTrigger(unique_id="model.p.n", runtime_root="/tmp")
    trigger.task_instance = runtime_ti
    copy = weakref.ref(runtime_ti.task.dag)
    gc.collect()
    assert copy() is not None and context["dag"] is copy()  # the copy is held before
    trigger.render_template_fields(context=context)
    gc.collect()
    assert copy() is None
    assert trigger._run_identity() == ("d", "r", 1)  # what the trigger still needs


def test_a_node_trigger_logging_to_a_full_log_never_blocks_the_triggerer_loop(tmp_path: Path) -> None:
    """Airflow 3.3.2's triggerer deadlocks when a trigger blocks its loop on a full log socket (README)."""
    from dlh_airflow_common.triggers.node import DbtNodeTrigger
    from tests.blocking_log import BlockingLog, first_event_with

    _control_dir(tmp_path, state="running", heartbeat=time.time(), results=[
        _row("model.p.a", "success"), _row("test.p.t", "warn", "1 row")])
    trigger = DbtNodeTrigger(unique_id="model.p.a", tests=["test.p.t"], runtime_root=str(tmp_path),
                             end_task=False, dag_id="d", run_id="r", try_number=1, poll_interval=0.05)
    log = BlockingLog()
    assert first_event_with(trigger, log)["outcome"] == "success"
    assert [line.split(":")[0] for line in log.lines] == ["model.p.a", "test.p.t", "model.p.a built (0.5s)"]
    assert min(log.during) > 10, f"event loop ticks during each blocked write: {log.during}"
