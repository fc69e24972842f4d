"""Airflow DAGs that exercise DbtOperator in the test suite (run with dag.test())."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

PROJECT = os.environ.get("DLH_TEST_PROJECT_DIR", "/nonexistent")
FLAKY_CSV = str(Path(PROJECT).parent / "flaky.csv")
UPLOADS = str(Path(PROJECT).parent / "uploads")


def _make_flaky_pass(context: Any) -> None:
    """on_retry_callback: the cause of the failure goes away before the retry."""
    Path(FLAKY_CSV).write_text("x\n1\n")


def _make_flaky_pass_elsewhere(context: Any) -> None:
    """on_retry_callback: as above, and the retry runs as on another host (no local retry state)."""
    _make_flaky_pass(context)
    shutil.rmtree(Path(os.environ["DLH_DBT_RUNTIME_ROOT"]) / "retry_state", ignore_errors=True)


def record_failure(context: Any) -> None:
    """on_failure_callback: keep the exception the task failed with, for the tests to inspect."""
    exc = context.get("exception")
    out = Path(PROJECT).parent / "failures"
    out.mkdir(exist_ok=True)
    (out / f"{context['dag'].dag_id}.json").write_text(
        json.dumps({"type": type(exc).__name__, "text": str(exc)}))


def _dag(dag_id: str, **op_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             tags=["dbt-tests"]) as dag:
        if op_kwargs.get("deferrable"):  # defer at once: these runs are short, and the trigger is under test
            op_kwargs.setdefault("defer_after", 0)
        op_kwargs.setdefault("keep_target_artifacts", True)
        op_kwargs.setdefault("on_failure_callback", record_failure)
        DbtOperator(task_id="dbt", dbt_project_dir=PROJECT, check_interval=0.5, **op_kwargs)
    return dag


for mode, deferrable in (("sync", False), ("deferred", True)):
    for warehouse in ("duck", "pg"):
        _dag(f"{warehouse}_{mode}_build", command="build", conn_id=f"{warehouse}_ops", deferrable=deferrable,
             upload_artifacts=True, artifacts_destination=f"file://{UPLOADS}",
             dbt_docs_url="https://docs.example.com/dbt", artifacts_url="https://artifacts.example.com/dbt")
    for warehouse in ("duck", "pg"):
        _dag(f"{warehouse}_{mode}_failing_model", command="build", conn_id=f"{warehouse}_ops",
             deferrable=deferrable, select=["boom", "+stg_customers"], vars={"boom": True})
    _dag(f"pg_{mode}_timeout", command="build", conn_id="pg_ops", deferrable=deferrable, exclude="test_type:data",
         select="+slow_model", vars={"slow_seconds": 120}, timeout=20, cancel_grace=10,
         keep_target_artifacts=False)
    # A warehouse nobody listens on: a transient failure, retried inside the try, then failed.
    _dag(f"pg_{mode}_refused", command="build", conn_id="pg_refused", deferrable=deferrable, retry_limit=1,
         transient_retry_delay=0.1, select="stg_customers")
    _dag(f"duck_{mode}_retry_resume", command="build", conn_id="duck_ops", deferrable=deferrable,
         select="+flaky_child", exclude="test_type:data", vars={"flaky": True},
         env_vars={"DLH_FLAKY_CSV": FLAKY_CSV}, retries=1, retry_delay=timedelta(seconds=0),
         on_retry_callback=_make_flaky_pass)
# Watched from its worker for up to 120 s, but its timeout is 8 s: the watch stops there, not at 120 s.
_dag("pg_watched_timeout", command="build", conn_id="pg_ops", deferrable=True, defer_after=120, timeout=8,
     exclude="test_type:data", select="+slow_model", vars={"slow_seconds": 120}, cancel_grace=10,
     keep_target_artifacts=False)
# The retry state through the state store (the suite's S3): the retry finds none on its "host".
_dag("duck_sync_retry_resume_store", command="build", conn_id="duck_ops", select="+flaky_child",
     exclude="test_type:data", vars={"flaky": True}, env_vars={"DLH_FLAKY_CSV": FLAKY_CSV}, retries=1,
     retry_delay=timedelta(seconds=0), on_retry_callback=_make_flaky_pass_elsewhere,
     state_store="s3://dlh-state/retry", state_store_conn_id="dlh_s3")
# Deferred at once and watched through the state store (the suite's S3); artifacts uploaded on resume.
_dag("duck_deferred_build_store", command="build", conn_id="duck_ops", deferrable=True, select="+stg_customers",
     upload_artifacts=True, artifacts_destination=f"file://{UPLOADS}",
     state_store="s3://dlh-state/deferred-test", state_store_conn_id="dlh_s3")
# Deferrable, with the default wait before deferring: a short build is reported without deferring.
_dag("duck_watched_build", command="build", conn_id="duck_ops", deferrable=True, defer_after=None)
