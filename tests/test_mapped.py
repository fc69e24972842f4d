"""The mapped per-node layout (``DbtProject(node_layout="mapped")``): one mapped task over the nodes.

Rendering (a small serialized DAG, start from the triggerer on the class), the one function that reads
Airflow's internals to find a node by map index (pinned here against the scheduler's and the
triggerer's own task instances), the naming hook, the trigger reading its node from the producer's
index, and the worker path under ``dag.test()``. The real scheduler + triggerer run is in
tests/test_streamed_smoke.py.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.rendering import DbtProject, dbt_dag
from tests.conftest import REPO
from tests.test_streamed import _control_dir, _row, _run_dirs

PROJECT = os.environ["DLH_RENDER_PROJECT_DIR"]
WHEN: dict[str, Any] = {"schedule": None, "start_date": datetime(2026, 1, 1)}


def _project(**kw: Any) -> DbtProject:
    return DbtProject(project_dir=PROJECT, conn_id="render_duck", execution="streamed", **kw)


def test_the_mapped_layout_is_one_small_mapped_task_started_in_the_triggerer() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    from dlh_airflow_common.rendering.mapped import DbtMappedNodeOperator

    mapped = dbt_dag("m_layout", _project(node_layout="mapped"), **WHEN)
    tasks = dbt_dag("t_layout", _project(node_layout="tasks"), **WHEN)
    assert set(mapped.task_dict) == {"dbt_producer", "dbt_nodes", "dbt_assets_of_failed_builds"}
    nodes, producer = mapped.task_dict["dbt_nodes"], mapped.task_dict["dbt_producer"]
    uids = nodes.expand_input.value["dbt_unique_id"]
    assert sorted(uids) == sorted(t.dbt_unique_id for t in tasks.tasks if t.task_id.startswith(("model.", "seed.",
                                                                                              "test.", "snapshot.")))
    assert issubclass(nodes.operator_class, DbtMappedNodeOperator)
    assert nodes.operator_class.__name__ == "DbtMappedNodeOperator"
    assert nodes.start_from_trigger and "unique_id" not in nodes.start_trigger_args.trigger_kwargs
    # no edge from the producer: it stays a leaf, so its failed build fails the DAG run
    assert nodes.trigger_rule == "always" and not nodes.upstream_task_ids
    assert producer.downstream_task_ids == {"dbt_assets_of_failed_builds"}
    # the producer knows each map index's node and tests, outside the serialized DAG
    assert [uid for uid, _ in producer.node_index] == uids
    stg_a_tests = dict(producer.node_index)["model.gen.stg_a"]
    assert len(stg_a_tests) == 1 and stg_a_tests[0].startswith("test.gen.not_null_stg_a_id."), stg_a_tests
    text = json.dumps(DagSerialization.to_dict(mapped))
    assert "not_null_stg_a_id" not in text  # no second O(N) list
    assert len(text) < len(json.dumps(DagSerialization.to_dict(tasks))) / 3
    # one class per distinct trigger arguments, reused
    again = dbt_dag("m_again", _project(node_layout="mapped"), **WHEN)
    assert again.task_dict["dbt_nodes"].operator_class is nodes.operator_class


def test_the_producer_watches_two_minutes_before_it_defers_unless_told() -> None:
    # a short build ends on its worker: no resume floor, no second worker process on the DAG run's tail
    for layout in ("mapped", "tasks"):
        assert dbt_dag(f"p_{layout}", _project(node_layout=layout), **WHEN).task_dict["dbt_producer"].defer_after \
            == 120.0
    told = _project(node_layout="mapped", operator_args={"defer_after": 30})
    assert dbt_dag("p_told", told, **WHEN).task_dict["dbt_producer"].defer_after == 30.0
    by_default_args = dbt_dag("p_defaults", _project(), default_args={"defer_after": 45}, **WHEN)
    assert by_default_args.task_dict["dbt_producer"].defer_after == 45.0
    assert by_default_args.task_dict["model.stg_a"].defer_after == 45.0
    assert dbt_dag("p_other", _project(), **WHEN).task_dict["model.stg_a"].defer_after == 15.0


def test_a_streamed_task_group_watches_its_own_producer_and_is_the_only_one_in_its_dag() -> None:
    from airflow.sdk import DAG

    from dlh_airflow_common.operators.dbt import DbtOperator
    from dlh_airflow_common.rendering import dbt_task_group

    for layout in ("tasks", "mapped"):
        with DAG(f"grouped_{layout}", **WHEN) as dag:
            dbt_task_group("dbt", _project(node_layout=layout))
        watching = {t.partial_kwargs["stream_from"] if layout == "mapped" else t.stream_from
                    for t in dag.tasks if t.task_id.startswith(("dbt.model.", "dbt.dbt_nodes"))}
        assert watching == {"dbt.dbt_producer"}, (layout, watching)
        assert dag.task_dict["dbt.dbt_producer"].stream_nodes
        # node results are kept per DAG run: a second streamed project in the DAG would read the first's
        with DAG(f"two_streams_{layout}", **WHEN), pytest.raises(
                ValueError, match=r"already streams a dbt build \(task one.dbt_producer\), so two.dbt_producer"):
            dbt_task_group("one", _project(node_layout=layout))
            dbt_task_group("two", _project(node_layout=layout))
    with DAG("own_producer_after", **WHEN), pytest.raises(
            ValueError, match=r"already streams a dbt build \(task dbt.dbt_producer\), so mine cannot"):
        dbt_task_group("dbt", _project())
        DbtOperator(task_id="mine", command="build", dbt_project_dir=PROJECT, stream_nodes=True)
    with DAG("stream_and_isolated", **WHEN) as dag:  # a streamed and an isolated project share a DAG
        dbt_task_group("one", _project())
        dbt_task_group("two", DbtProject(project_dir=PROJECT, conn_id="render_duck", shape="nodes"))
    assert "two.model.stg_a" in dag.task_dict


def test_auto_picks_the_layout_by_node_count_and_bad_layouts_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.rendering import mapped

    assert "dbt_nodes" not in dbt_dag("auto_small", _project(), **WHEN).task_dict  # 11 nodes: a task each
    monkeypatch.setattr("dlh_airflow_common.rendering.project.AUTO_MAPPED_ABOVE", 5)
    assert mapped.AUTO_MAPPED_ABOVE == 200
    assert set(dbt_dag("auto_big", _project(), **WHEN).task_dict) == {"dbt_producer", "dbt_nodes",
                                                                       "dbt_assets_of_failed_builds"}
    with pytest.raises(ValueError, match="node_layout='grid' is not one of auto, tasks, mapped"):
        _project(node_layout="grid")
    with pytest.raises(ValueError, match='needs shape="nodes", execution="streamed"'):
        DbtProject(project_dir=PROJECT, conn_id="render_duck", node_layout="mapped")


def _runtime_ti(dag: Any, task_id: str, map_index: int) -> Any:
    """The task instance a triggerer builds for a trigger started there (as Airflow 3.3.2 does)."""
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.serialization.serialized_objects import DagSerialization

    now = datetime.now(UTC)
    ti = TaskInstanceDTO(id=uuid.uuid4(), task_id=task_id, dag_id=dag.dag_id, run_id="r", try_number=1,
                         map_index=map_index, dag_version_id=uuid.uuid4(), pool_slots=1, priority_weight=1,
                         queue="default")
    run = {"dag_id": dag.dag_id, "run_id": "r", "logical_date": now, "data_interval_start": now,
           "data_interval_end": now, "run_after": now, "start_date": now, "end_date": None, "run_type": "manual",
           "state": "running", "conf": {}, "consumed_asset_events": [], "partition_key": None, "clear_number": 0}
    return TriggerRunner.create_runtime_ti(ti, DagSerialization.to_dict(dag), run)


def test_mapped_node_reads_the_map_index_and_expand_value_where_airflow_keeps_them() -> None:
    """Pins the one reader of Airflow internals: the scheduler's task instance (serialized mapped task,
    as the naming hook gets it) and the triggerer's runtime one (after the trigger dropped its task)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.serialization.serialized_objects import DagSerialization

    from dlh_airflow_common.naming import mapped_node, task_instance_mutation_hook
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    dag = dbt_dag("m_pin", _project(node_layout="mapped"), **WHEN)
    uids = dag.task_dict["dbt_nodes"].expand_input.value["dbt_unique_id"]
    scheduler_dag = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    names = {"model.gen.boom": "model.boom", "seed.gen.raw_events": "seed.raw_events",
             uids[-1]: "test.relationships_mart_2_id__id__ref_stg_a_"}  # a test's name, not its hash
    for index in (uids.index(uid) for uid in names):
        ti = TaskInstance(scheduler_dag.get_task("dbt_nodes"), run_id="r", map_index=index, dag_version_id=None)
        assert mapped_node(ti) == (index, uids[index])
        task_instance_mutation_hook(ti, None)
        assert ti.rendered_map_index == names[uids[index]]
    producer = TaskInstance(scheduler_dag.get_task("dbt_producer"), run_id="r", dag_version_id=None)
    task_instance_mutation_hook(producer, None)
    assert mapped_node(producer) == (-1, None) and producer.rendered_map_index is None  # left alone

    runtime = _runtime_ti(dag, "dbt_nodes", 4)
    assert mapped_node(runtime) == (4, uids[4])
    trigger = DbtNodeTrigger(runtime_root="/tmp")
    trigger.task_instance = runtime
    trigger.render_template_fields(context=runtime.get_template_context())  # lets go of its DAG copy
    assert mapped_node(runtime) == (4, None)


def _index(path: Path, nodes: list[tuple[str, list[str]]]) -> None:
    from dlh_airflow_common.core.stream import write_node_index

    write_node_index(path, nodes)


def test_a_map_index_trigger_reads_its_node_and_tests_from_the_producers_index(tmp_path: Path) -> None:
    import asyncio

    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    dag = dbt_dag("m_index", _project(node_layout="mapped"), **WHEN)
    launch = _control_dir(tmp_path, state="running", heartbeat=time.time(), results=[
        _row("model.p.a", "success"), _row("model.p.b", "error", "relation missing"),
        _row("model.p.c", "success"), _row("test.p.t", "fail", "3 rows")])
    _index(launch, [("model.p.a", []), ("model.p.b", []), ("model.p.c", ["test.p.t"])])

    def first(index: int) -> dict[str, Any]:
        trigger = DbtNodeTrigger(runtime_root=str(tmp_path), end_task=False, dag_id="d", run_id="r",
                                 try_number=1, poll_interval=0.05)
        trigger.task_instance = _runtime_ti(dag, "dbt_nodes", index)

        async def run() -> dict[str, Any]:
            async for event in trigger.run():
                return dict(event.payload)
            raise AssertionError("no event")

        return asyncio.run(asyncio.wait_for(run(), 20))

    assert first(0) == {"outcome": "success", "message": "model.p.a built (0.5s)", "unique_id": "model.p.a"}
    assert first(1)["outcome"] == "failed" and "relation missing" in first(1)["message"]
    tested = first(2)  # its node built, its attached test failed
    assert tested["outcome"] == "failed" and tested["unique_id"] == "model.p.c"
    assert tested["message"].startswith("test.p.t fail"), tested
    beyond = first(3)
    assert beyond["outcome"] == "failed" and "Map index 3 is beyond the producer's node index (3 nodes)" \
        in beyond["message"]

    # Ended in the triggerer, a map index has no worker to store its "dbt Docs" link: its end event does,
    # for its own node (the project's page comes with the rendered trigger arguments).
    kwargs = dag.get_task("dbt_nodes").start_trigger_args.trigger_kwargs
    from dlh_airflow_common.docs import project_name_of

    assert kwargs["docs_page"] == f"/dbt-docs/{project_name_of(PROJECT)}/#!/overview", kwargs

    def ended(index: int) -> Any:
        trigger = DbtNodeTrigger(runtime_root=str(tmp_path), dag_id="d", run_id="r", try_number=1,
                                 poll_interval=0.05, docs_page=kwargs["docs_page"])
        trigger.task_instance = _runtime_ti(dag, "dbt_nodes", index)

        async def run() -> Any:
            async for event in trigger.run():
                return event
            raise AssertionError("no event")

        return asyncio.run(asyncio.wait_for(run(), 20))

    page = kwargs["docs_page"].removesuffix("#!/overview")
    for index, (uid, state) in enumerate([("model.p.a", "success"), ("model.p.b", "failed")]):
        event = ended(index)
        assert str(event.task_instance_state) == state, event
        assert event.xcoms == {"_link_DbtDocsLink": f"{page}#!/model/{uid}"}, event.xcoms


def test_the_store_channel_reads_the_index_written_before_the_first_status(tmp_path: Path) -> None:
    import fsspec

    from dlh_airflow_common.core.store import StateStore
    from dlh_airflow_common.core.store_stream import StoreChannel, StoreStreamWriter
    from dlh_airflow_common.core.stream import StreamState

    store = StateStore(fsspec.filesystem("file", auto_mkdir=True), f"file://{tmp_path}")
    writer = StoreStreamWriter(store, ("streams", "d", "r", "0001"))
    writer.start(index=[("model.p.a", ["test.p.t"])])
    state = StreamState()
    StoreChannel(store, ("streams", "d", "r")).poll(state)
    writer.close(state="success")
    assert state.seen and state.index == [("model.p.a", ["test.p.t"])]


def test_mapped_nodes_under_dag_test_run_on_the_worker_path(airflow_db: None) -> None:
    """dag.test() runs each map index through execute(): the worker path (watch, defer to the trigger with
    its node), the fallback of Airflow < 3.3 too (also run on 3.1 by `make test-compat`). A failing model
    fails its map index; dbt skips its child."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2 (make test-compat)
        from airflow.models.dagbag import DagBag  # type: ignore[attr-defined,no-redef]

    bag = DagBag(str(REPO / "tests" / "dags" / "mapped_dbt_dags.py"))
    assert not bag.import_errors, bag.import_errors
    dr = bag.get_dag("mapped_streamed_duck_boom").test()
    by_node = _mapped_states(dr)
    assert by_node["model.boom"] == "failed", by_node
    assert by_node["model.boom_child"] == "skipped", by_node
    assert by_node["model.mart_1"] == "success" and by_node["seed.raw_events"] == "success", by_node
    assert by_node["dbt_producer"] == "failed" and by_node.pop("dbt_assets_of_failed_builds") == "success"
    assert len(by_node) == 12, by_node  # the producer and every node
    runs = _run_dirs("mapped_streamed_duck_boom")
    assert len(runs) == 1 and "_dbt_producer_" in runs[0], runs  # one dbt process built them all


def _mapped_states(dr: Any) -> dict[str, str]:
    """Task states of a run, map indexes by node name (the index's name, as the worker rendered it)."""
    out = {}
    for ti in dr.get_task_instances():
        out[ti.rendered_map_index if ti.map_index >= 0 else ti.task_id] = str(ti.state)
    return out


def test_the_producer_can_tell_whether_airflow_applies_the_naming_hook() -> None:
    """As Airflow loads airflow_local_settings.py: the hook becomes a policy plugin of this process."""
    import types

    from airflow import policies, settings

    from dlh_airflow_common import naming

    manager = settings.get_policy_plugin_manager()
    assert not naming.hook_installed()
    local = types.ModuleType("airflow_local_settings")
    local.task_instance_mutation_hook = naming.task_instance_mutation_hook  # type: ignore[attr-defined]
    before = set(manager.get_plugins())
    policies.make_plugin_from_local_settings(manager, local, {"task_instance_mutation_hook"})
    try:
        assert naming.hook_installed()
    finally:
        for plugin in set(manager.get_plugins()) - before:
            manager.unregister(plugin)
    assert not naming.hook_installed()


def test_a_trigger_holds_its_final_event_until_the_triggerer_read_its_log_lines() -> None:
    """The wait behind "every line in the task's own log": unread bytes on the runner's log socket."""
    import asyncio
    import socket
    import subprocess
    import sys

    from dlh_airflow_common.triggers import offloop

    ours, supervisor = socket.socketpair()
    try:
        ours.sendall(b'{"event": "model.p.a built (0.5s)"}\n' * 50)

        async def wait() -> tuple[bool, float]:
            waiting = asyncio.create_task(offloop.logs_delivered(timeout=10, fd=ours.fileno()))
            await asyncio.sleep(0.5)
            early = waiting.done()
            while offloop.unread_log_bytes(ours.fileno()) > 0:  # the supervisor reads 4 KB at a time
                supervisor.recv(4096)
            return early, await waiting

        early, waited = asyncio.run(wait())
        assert not early and 0.5 <= waited < 5, (early, waited)

        # Thousands of waiters share one poll of the socket: the loop's work does not grow with them.
        ours.sendall(b'{"event": "model.p.b built (0.5s)"}\n' * 50)
        polls = 0
        counted = offloop.unread_log_bytes

        def counting(fd: int) -> int:
            nonlocal polls
            polls += 1
            return counted(fd)

        async def many() -> list[float]:
            waiting = [asyncio.create_task(offloop.logs_delivered(timeout=10, fd=ours.fileno()))
                       for _ in range(2000)]
            await asyncio.sleep(0.5)
            assert not any(w.done() for w in waiting)
            while counted(ours.fileno()) > 0:
                supervisor.recv(4096)
            return list(await asyncio.gather(*waiting))

        offloop.unread_log_bytes = counting  # type: ignore[assignment]
        try:
            waits = asyncio.run(many())
        finally:
            offloop.unread_log_bytes = counted  # type: ignore[assignment]
        assert all(0.3 <= w < 5 for w in waits) and polls < 100, (min(waits), max(waits), polls)
        # one that times out leaves the others waiting, and the drain still ends when the socket empties
        ours.sendall(b"x" * 100)

        async def one_gives_up() -> tuple[float, float]:
            short = asyncio.create_task(offloop.logs_delivered(timeout=0.2, fd=ours.fileno()))
            long = asyncio.create_task(offloop.logs_delivered(timeout=10, fd=ours.fileno()))
            gave_up = await short
            assert not long.done()
            supervisor.recv(4096)
            return gave_up, await long

        gave_up, waited = asyncio.run(one_gives_up())
        assert 0.2 <= gave_up < 0.5 and 0.2 <= waited < 2, (gave_up, waited)
    finally:
        ours.close()
        supervisor.close()
    # The socket it watches is the one Airflow's runner logs to (found as the triggerer sets it up).
    probe = ("import socket\nfrom airflow.sdk.execution_time.supervisor import _configure_logs_over_json_channel\n"
             "from dlh_airflow_common.triggers.offloop import _log_socket\na, b = socket.socketpair()\n"
             "fd = a.detach()\n_configure_logs_over_json_channel(fd)\nprint(_log_socket() == fd)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1:] == ["True"], out.stdout[-2000:] + out.stderr[-2000:]


def test_a_map_index_fails_when_the_producer_is_cancelled_or_dead_and_builds_what_it_skipped(
        tmp_path: Path) -> None:
    """The streamed mode's producer paths, for a map index (its node known only from the producer's index)."""
    import asyncio
    import shutil

    from dlh_airflow_common.triggers.node import DbtNodeTrigger
    from tests.trigger_events import first_event_after

    dag = dbt_dag("m_producer", _project(node_layout="mapped"), **WHEN)
    nodes: list[tuple[str, list[str]]] = [("model.p.a", []), ("model.p.x", [])]

    def trigger(root: Path, **kw: Any) -> Any:
        made = DbtNodeTrigger(runtime_root=str(root), end_task=False, dag_id="d", run_id="r", try_number=1,
                              poll_interval=0.05, **kw)
        made.task_instance = _runtime_ti(dag, "dbt_nodes", 1)  # model.p.x
        return made

    def first(root: Path, **kw: Any) -> dict[str, Any]:
        made = trigger(root, **kw)

        async def run() -> dict[str, Any]:
            async for event in made.run():
                return dict(event.payload)
            raise AssertionError("no event")

        return asyncio.run(asyncio.wait_for(run(), 20))

    _index(_control_dir(tmp_path / "done", state="success", heartbeat=time.time(), results=[]), nodes)
    assert first(tmp_path / "done") == {  # not built by the producer (not selected there): on a worker
        "outcome": "run_itself", "unique_id": "model.p.x",
        "message": "model.p.x was not built by the producer run (not selected there): this task builds it itself"}
    _index(_control_dir(tmp_path / "cancel", state="cancelled", heartbeat=time.time(), results=[]), nodes)
    cancelled = first(tmp_path / "cancel")
    assert cancelled["outcome"] == "failed" and "cancelled before it built model.p.x" in cancelled["message"]
    dead_dir = _control_dir(tmp_path / "dead", state="running", heartbeat=time.time() - 600, results=[])
    _index(dead_dir, nodes)
    dead = first(tmp_path / "dead", heartbeat_timeout=5)
    assert dead["outcome"] == "failed" and "stopped reporting" in dead["message"], dead
    assert str(dead_dir / "progress.log") in dead["message"], dead
    killed = _control_dir(tmp_path / "killed", state="running", heartbeat=time.time(), results=[])
    _index(killed, nodes)
    gone, after = first_event_after(trigger(tmp_path / "killed"), 0.3, lambda: shutil.rmtree(killed), 30)
    assert gone["outcome"] == "failed" and "cancelled before it built model.p.x" in gone["message"], gone
    assert after < 10, after  # at once, not after the 120 s heartbeat timeout
