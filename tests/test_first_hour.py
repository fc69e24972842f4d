"""A new user's first hour (issue 20): no hang, no silent no-op, the first error raised, data where meant."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO

DAG_FILE = REPO / "tests" / "dags" / "first_hour_dags.py"
NOT_SHARED = "needs the runtime root"  # the producer's error when the shared root is not declared


@pytest.fixture(scope="module")
def bag(airflow_db: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


@pytest.mark.timeout(180)
def test_node_tasks_end_within_seconds_of_a_producer_that_failed_before_launch(
        bag: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DLH_DBT_SHARED_RUNTIME_ROOT")
    dag = bag.get_dag("first_hour_producer_fails")
    dr = dag.test()  # returns (before the fix, node tasks rescheduled forever: the timeout marker)
    states = _states(dr)
    assert states.pop("dbt_producer") == "failed"
    assert set(states.values()) == {"failed"}, states
    ended = {ti.task_id: ti.end_date for ti in dr.get_task_instances()}
    producer_end = ended.pop("dbt_producer")
    late = max(ended.values()) - producer_end
    assert late.total_seconds() < 30, f"the last node task ended {late} after its producer"
    out = "".join(capfd.readouterr())  # the task logs (structlog writes them to stdout here)
    assert "The producer task dbt_producer failed before it started dbt" in out
    assert NOT_SHARED in out


@pytest.mark.timeout(240)
def test_airflow_dags_test_ends_when_the_producer_failed_before_launch(airflow_db: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLH_DBT_SHARED_RUNTIME_ROOT"}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "first_hour_producer_fails", "-f", str(DAG_FILE)],
        env=env, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert "The producer task dbt_producer failed before it started dbt" in out, out[-3000:]
    assert NOT_SHARED in out
