"""The state store: streamed node results through a real S3 endpoint (moto's server), no shared volume read.

The DAG runs here share one host, so the runtime root is still shared; what shows that node tasks
read only the store is that the producer writes no ``nodes.jsonl`` there when a store is set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import BUCKET, CONN_ID, SECRET_KEY, S3Server
from tests.trigger_events import first_event_after

DAG_FILE = Path(__file__).parent / "dags" / "store_streamed_dags.py"
RUNTIME = Path(os.environ["DLH_DBT_RUNTIME_ROOT"])


def _event(name: str, uid: str, status: str = "success", message: str = "") -> dict[str, Any]:
    info = {"name": name}
    node = {"unique_id": uid, "node_path": f"models/{uid}.sql"}
    if name == "NodeStart":
        return {"info": info, "data": {"node_info": node}}
    return {"info": info, "data": {"node_info": node, "run_result": {"status": status, "message": message,
                                                                       "execution_time": 0.1}}}


# -- the store itself --------------------------------------------------------------------------
def test_a_store_that_cannot_be_used_fails_at_once_with_the_url_and_the_fix(s3: S3Server) -> None:
    from dlh_airflow_common.core.exceptions import DbtStateStoreException
    from dlh_airflow_common.state_store import StoreSetting, open_store

    with pytest.raises(DbtStateStoreException) as missing:
        open_store(StoreSetting("s3://no-such-bucket-here/x", CONN_ID))
    assert "s3://no-such-bucket-here/x" in str(missing.value) and "create it" in str(missing.value)

    down = S3Server()  # a port nobody listens on
    name, value = down.connection_env("dlh_s3_down")
    os.environ[name] = value
    started = time.monotonic()
    with pytest.raises(DbtStateStoreException) as unreachable:
        open_store(StoreSetting(f"s3://{BUCKET}/x", "dlh_s3_down"))
    assert time.monotonic() - started < 60, "a bounded wait"
    assert f"s3://{BUCKET}/x" in str(unreachable.value) and "endpoint_url" in str(unreachable.value)

    with pytest.raises(DbtStateStoreException) as no_conn:
        open_store(StoreSetting(f"s3://{BUCKET}/x", "no_such_conn"))
    assert "state_store_conn_id" in str(no_conn.value)
    for exc in (missing.value, unreachable.value, no_conn.value):
        assert SECRET_KEY not in str(exc)


def test_refused_credentials_are_named_as_such_without_the_secret() -> None:
    """moto accepts any key, so the store's refusal is played by a filesystem that answers 403."""
    from dlh_airflow_common.core.exceptions import DbtStateStoreException
    from dlh_airflow_common.core.store import StateStore

    class Refusing:
        def _strip_protocol(self, url: str) -> str:
            return url.split("://", 1)[1]

        def ls(self, *_a: Any, **_k: Any) -> None:
            raise PermissionError(f"Access Denied for key with secret {SECRET_KEY}")

    with pytest.raises(DbtStateStoreException) as refused:
        StateStore(Refusing(), "s3://b-ucket/p", [SECRET_KEY]).check()
    assert "refused the credentials" in str(refused.value) and SECRET_KEY not in str(refused.value)


def test_writer_batches_results_and_a_reader_never_takes_a_final_status_before_them(s3: S3Server) -> None:
    from dlh_airflow_common.core.store_stream import StoreChannel, StoreStreamWriter, stream_key
    from dlh_airflow_common.core.stream import StreamState
    from dlh_airflow_common.state_store import StoreSetting, open_store

    store = open_store(StoreSetting(f"s3://{BUCKET}/unit", CONN_ID))
    prefix = (*stream_key("d", "r"), "00000000000000000001-a")
    writer = StoreStreamWriter(store, prefix)
    writer.start(pid=1)
    started = time.monotonic()
    for i in range(30):  # 30 nodes within about 1.5 s
        writer(_event("NodeStart", f"model.p.m{i}"))
        writer(_event("NodeFinished", f"model.p.m{i}", "error" if i == 7 else "success", "boom"))
        time.sleep(0.05)
    writer.close(state="failed")
    elapsed = time.monotonic() - started
    batches = s3.keys(BUCKET, f"unit/{'/'.join(prefix)}/nodes/")
    assert 1 <= len(batches) <= elapsed / 1.0 + 2, (batches, elapsed)  # at most one a second (+ the last)

    reader = StoreChannel(open_store(StoreSetting(f"s3://{BUCKET}/unit", CONN_ID)), stream_key("d", "r"))
    state = StreamState()
    assert reader.poll(state)
    assert state.seen and state.status is not None and state.status["state"] == "failed"
    assert len(state.results) == 30 and state.results["model.p.m7"]["status"] == "error"
    listed = reader.store.request_counts()
    assert not reader.poll(state)  # nothing new: one list, no get
    assert reader.store.request_counts()["get"] == listed["get"]

    # A final status that counts a batch not written yet is held back until the batch is there.
    late = (*stream_key("d", "late"), "00000000000000000001-b")
    store.put_json({"state": "success", "heartbeat": time.time(), "batches": 1}, *late, "status.json")
    held = StreamState()
    StoreChannel(store, stream_key("d", "late")).poll(held)
    assert held.status is None and not held.seen


def test_a_reader_sees_batches_another_process_writes_while_it_polls(s3: S3Server) -> None:
    """s3fs caches dir listings: a reader whose cache predates a batch must still get it (seen in the bench:
    node tasks waited forever for batches a detached producer wrote after the reader's first poll)."""
    import s3fs

    from dlh_airflow_common.core.store import StateStore
    from dlh_airflow_common.core.store_stream import StoreChannel, StoreStreamWriter, stream_key
    from dlh_airflow_common.core.stream import StreamState
    from dlh_airflow_common.state_store import StoreSetting, open_store

    elsewhere = s3fs.S3FileSystem(key="k", secret="s", endpoint_url=s3.endpoint, skip_instance_cache=True)
    writer = StoreStreamWriter(StateStore(elsewhere, f"s3://{BUCKET}/elsewhere"),
                               (*stream_key("d", "r"), "00000000000000000001-a"))
    reader = StoreChannel(open_store(StoreSetting(f"s3://{BUCKET}/elsewhere", CONN_ID)), stream_key("d", "r"))
    state = StreamState()
    writer.start(pid=1)
    for i in range(6):
        writer(_event("NodeFinished", f"model.p.m{i}"))
        writer.mark_now()  # a batch now, as a second of dbt would
        reader.poll(state)
        assert len(state.results) == i + 1, (i, sorted(state.results))
    writer.close(state="success")
    reader.poll(state)
    assert state.status is not None and state.status["state"] == "success"


def test_node_tasks_end_with_the_producers_error_when_it_failed_before_launch_through_the_store(
        s3: S3Server, tmp_path: Path) -> None:
    """No shared root: the producer's early failure reaches a node trigger on another host via the store."""
    from dlh_airflow_common.core.store_stream import (
        StoreChannel,
        clear_failed_before_launch_in_store,
        mark_failed_before_launch_in_store,
        stream_key,
    )
    from dlh_airflow_common.core.stream import StreamState
    from dlh_airflow_common.state_store import StoreSetting, open_store
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    store, run = open_store(StoreSetting(f"s3://{BUCKET}/early", CONN_ID)), stream_key("d", "r")
    reader, state = StoreChannel(store, run), StreamState()
    mark_failed_before_launch_in_store(store, run, "DbtException: bad profile", final=False)
    reader.poll(state)
    assert state.early_failure is None  # Airflow retries the producer: its node tasks wait for that
    mark_failed_before_launch_in_store(store, run, "DbtException: bad profile", final=True)
    assert reader.poll(state) and state.early_failure is not None and not state.seen
    gets = store.request_counts()["get"]
    assert not reader.poll(state) and store.request_counts()["get"] == gets  # read again only when changed
    clear_failed_before_launch_in_store(store, run)  # a new try of the producer
    assert reader.poll(state) and state.early_failure is None

    mark_failed_before_launch_in_store(store, run, "DbtException: bad profile", final=True)
    trigger = DbtNodeTrigger(unique_id="model.p.x", runtime_root=str(tmp_path), end_task=False, dag_id="d",
                             run_id="r", try_number=1, poll_interval=0.05,
                             state_store=f"s3://{BUCKET}/early", state_store_conn_id=CONN_ID)
    event, _ = first_event_after(trigger, 0, lambda: None, 60)
    assert event["outcome"] == "failed", event
    assert event["message"] == ("The producer task dbt_producer failed before it started dbt, so no node "
                                "was built: DbtException: bad profile")


# -- streamed DAG runs through the store ---------------------------------------------------------
@pytest.fixture(scope="module")
def bag(airflow_db: None, s3: S3Server) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _run_objects(s3: S3Server, dag_id: str, run_id: str) -> dict[str, list[str]]:
    """The run's store objects by launch."""
    from dlh_airflow_common.core.store_stream import stream_key

    prefix = "suite/" + "/".join(stream_key(dag_id, run_id)) + "/"
    by_launch: dict[str, list[str]] = {}
    for key in s3.keys(BUCKET, prefix):
        launch, rest = key[len(prefix):].split("/", 1)
        by_launch.setdefault(launch, []).append(rest)
    return by_launch


def _check_boom_run(s3: S3Server, dr: Any) -> dict[str, Any]:
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert states["model.boom"] == "failed", states
    assert states["model.boom_child"] == "skipped", states  # dbt skipped it: its upstream failed
    assert states["model.mart_1"] == "success" and states["seed.raw_events"] == "success", states
    assert states["dbt_producer"] == "failed", states
    # every node task ended from the producer's stream: none built its node itself on a worker
    assert not sorted(RUNTIME.glob(f"runs/run_*_{dr.dag_id}_model_*")), "a node task ran dbt itself"
    launches = _run_objects(s3, dr.dag_id, dr.run_id)
    assert len(launches) == 1, launches
    (objects,) = launches.values()
    assert {"status.json", "heartbeat"} <= set(objects) and any(o.startswith("nodes/") for o in objects)
    (launch,) = launches
    from dlh_airflow_common.core.store_stream import stream_key

    status = json.loads(s3.read(BUCKET, f"suite/{'/'.join(stream_key(dr.dag_id, dr.run_id))}/{launch}/status.json"))
    assert status["state"] == "failed" and status["batches"] == len([o for o in objects if o.startswith("nodes/")])
    return status


def _no_secret_on_disk() -> None:
    for path in RUNTIME.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_a_streamed_run_through_the_store_mirrors_each_node(bag: Any, s3: S3Server) -> None:
    from dlh_airflow_common.core.stream import stream_dir

    dr = bag.get_dag("store_streamed_boom").test()
    _check_boom_run(s3, dr)
    # the detached producer wrote node results to the store only, not to the runtime root
    assert not list(stream_dir(RUNTIME, dr.dag_id, dr.run_id).rglob("nodes.jsonl"))
    (status_file,) = stream_dir(RUNTIME, dr.dag_id, dr.run_id).glob("run_*/status.json")
    counts = json.loads(status_file.read_text())["store_requests"]
    print(f"producer's state store requests (detached): {counts}")
    assert 3 <= counts["total"] < 60, counts
    _no_secret_on_disk()


def test_a_sync_producer_streams_to_the_store_as_dbt_finishes_each_node(bag: Any, s3: S3Server) -> None:
    from dlh_airflow_common.core.stream import stream_dir

    dr = bag.get_dag("store_streamed_boom_sync").test()
    _check_boom_run(s3, dr)
    assert not stream_dir(RUNTIME, dr.dag_id, dr.run_id).exists()  # nothing detached, nothing on disk
    _no_secret_on_disk()


def test_a_mapped_producer_writes_its_node_index_to_the_store_before_its_status(bag: Any, s3: S3Server) -> None:
    """Map indexes born in a triggerer on another host read their node from there (the detached producer's
    supervisor copies its launch's index to the store before the first status)."""
    from dlh_airflow_common.core.store_stream import StoreChannel, stream_key
    from dlh_airflow_common.core.stream import StreamState
    from dlh_airflow_common.state_store import StoreSetting, open_store

    dag = bag.get_dag("store_mapped_boom")
    dr = dag.test()
    states = {ti.rendered_map_index if ti.map_index >= 0 else ti.task_id: str(ti.state)
              for ti in dr.get_task_instances()}
    assert states["model.boom"] == "failed" and states["model.boom_child"] == "skipped", states
    (objects,) = _run_objects(s3, dr.dag_id, dr.run_id).values()
    assert "node_index.json" in objects, objects
    state = StreamState()
    StoreChannel(open_store(StoreSetting(f"s3://{BUCKET}/suite", CONN_ID)), stream_key(dr.dag_id, dr.run_id)).poll(state)
    assert state.index == dag.task_dict["dbt_producer"].node_index  # map index -> node and tests, in order
    assert [uid for uid, _ in state.index] == dag.task_dict["dbt_nodes"].expand_input.value["dbt_unique_id"]


# -- settings and the producer's variant ---------------------------------------------------------
def test_the_state_store_setting_comes_from_the_argument_then_env_then_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.operators import settings
    from dlh_airflow_common.state_store import StoreSetting

    for name in (settings.STATE_STORE_ENV, settings.STATE_STORE_CONN_ENV):
        monkeypatch.delenv(name, raising=False)
    assert settings.state_store(None) is None
    monkeypatch.setenv("AIRFLOW__DLH_DBT__STATE_STORE", "s3://from-cfg/p")
    monkeypatch.setenv("AIRFLOW__DLH_DBT__STATE_STORE_CONN_ID", "cfg_conn")
    assert settings.state_store(None) == StoreSetting("s3://from-cfg/p", "cfg_conn")
    monkeypatch.setenv(settings.STATE_STORE_ENV, "s3://from-env/p/")
    monkeypatch.setenv(settings.STATE_STORE_CONN_ENV, "env_conn")
    assert settings.state_store(None) == StoreSetting("s3://from-env/p", "env_conn")
    assert settings.state_store("s3://arg/p", "arg_conn") == StoreSetting("s3://arg/p", "arg_conn")


def test_the_producer_runs_sync_where_nothing_detached_would_survive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.core.exceptions import DbtException
    from dlh_airflow_common.operators.producer import SyncProducer, runs_sync
    from dlh_airflow_common.state_store import StoreSetting

    store = StoreSetting("s3://b-ucket/p", "c")
    assert not runs_sync(None, None) and not runs_sync(None, store)  # LocalExecutor, shared root declared
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")  # the pod ends when a task defers
    assert runs_sync(None, store) and not runs_sync(False, store)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.delenv("DLH_DBT_SHARED_RUNTIME_ROOT")  # its status reaches the triggerer through the store
    assert not runs_sync(None, store) and runs_sync(True, None)
    with pytest.raises(DbtException, match="DLH_DBT_STATE_STORE"):
        SyncProducer.start(None, {}, None, None)  # type: ignore[arg-type]


def test_node_tasks_fail_with_the_cause_when_the_store_goes_away_mid_run(s3: S3Server) -> None:
    """A second S3 endpoint stops while a node task waits: it fails after its bounded wait, naming why."""
    from dlh_airflow_common.core.store_stream import stream_key
    from dlh_airflow_common.state_store import StoreSetting, open_store
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    other = S3Server().start()
    try:
        other.create_bucket(BUCKET)
        name, value = other.connection_env("dlh_s3_other")
        os.environ[name] = value
        store = open_store(StoreSetting(f"s3://{BUCKET}/lost", "dlh_s3_other"))
        store.put_json({"state": "running", "heartbeat": time.time() + 3600, "batches": 0},
                       *stream_key("d", "r"), "00000000000000000001-a", "status.json")
        trigger = DbtNodeTrigger(unique_id="model.p.x", runtime_root="/nonexistent", end_task=False, dag_id="d",
                                 run_id="r", try_number=1, poll_interval=0.05, heartbeat_timeout=3,
                                 state_store=f"s3://{BUCKET}/lost", state_store_conn_id="dlh_s3_other")

        # stopped once the trigger has read the running status
        event, after = first_event_after(trigger, 2, other.stop, 120)
    finally:
        other.stop()
    assert event["outcome"] == "failed", event
    assert "cannot be read" in event["message"] and f"s3://{BUCKET}/lost" in event["message"], event
    assert after < 60, after


def test_retention_prunes_old_launches_in_the_store_but_not_a_running_one(s3: S3Server) -> None:
    from dlh_airflow_common.core.retention import Retention
    from dlh_airflow_common.core.store_retention import maybe_prune_store, prune_store
    from dlh_airflow_common.core.store_stream import stream_key
    from dlh_airflow_common.state_store import StoreSetting, open_store

    store = open_store(StoreSetting(f"s3://{BUCKET}/retention", CONN_ID))
    for run in ("r1", "r2", "r3", "r4"):
        store.put_json({"state": "success"}, *stream_key("d", run), "00000000000000000001-a", "status.json")
        store.put(b"{}\n", *stream_key("d", run), "00000000000000000001-a", "nodes", "000001.jsonl")

    def runs() -> set[str]:
        return {k.split("/")[3] for k in s3.keys(BUCKET, "retention/streams/")}

    keep_two = Retention(max_age=7 * 86400, keep=2, min_age=3600)
    assert prune_store(store, keep_two) == []  # all younger than min_age
    removed = prune_store(store, keep_two, now=time.time() + 7200)  # beyond the newest 2, over an hour old
    assert len(removed) == 2 and len(runs()) == 2, (removed, runs())
    assert len(prune_store(store, keep_two, now=time.time() + 8 * 86400)) == 2 and not runs()  # past max_age

    store.put(str(time.time()).encode(), *stream_key("d", "alive"), "00000000000000000001-a", "heartbeat")
    store.put_json({"state": "running"}, *stream_key("d", "alive"), "00000000000000000001-a", "status.json")
    store.put_json({"state": "failed"}, *stream_key("d", "dead"), "00000000000000000001-a", "status.json")
    everything_old = Retention(max_age=0, keep=0, min_age=0)
    assert [r.split("/")[2] for r in prune_store(store, everything_old)] == [stream_key("d", "dead")[2]]
    assert runs() == {stream_key("d", "alive")[2]}  # its heartbeat is fresh: a producer still running

    throttled = Retention(max_age=0, keep=0, min_age=0, every=600)
    store.remove(".retention")
    assert maybe_prune_store(store, throttled) is not None
    before = store.request_counts()["total"]
    assert maybe_prune_store(store, throttled) is None  # within `every`: one get, no listing
    assert store.request_counts()["total"] == before + 1
