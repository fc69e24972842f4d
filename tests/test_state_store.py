"""The state store: streamed node results through a real S3 endpoint (moto's server), no shared volume read.

The DAG runs here share one host, so the runtime root is still shared; what shows that node tasks
read only the store is that the producer writes no ``nodes.jsonl`` there when a store is set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import BUCKET, CONN_ID, SECRET_KEY, S3Server

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
