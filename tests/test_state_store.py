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
