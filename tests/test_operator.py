"""DbtOperator through real Airflow (dag.test()): sync and deferrable, DuckDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from dlh_airflow_common.core.exceptions import DbtCancelledException
from dlh_airflow_common.operators.dbt import DbtOperator
from tests.conftest import _SCRATCH, CANARY, REPO
from tests.pgserver import PgServer, free_port
from tests.processes import dbt_processes, no_dbt_processes, start_until_sleeping, wait_for_sleep

DAG_FILE = REPO / "tests" / "dags" / "dbt_operator_dags.py"
RUNTIME = Path(os.environ["DLH_DBT_RUNTIME_ROOT"])


@pytest.fixture(scope="module", autouse=True)
def _failure_callbacks_see_the_exception() -> Any:
    """Give dag.test() on Airflow < 3.3 the callback context a deployed task gets.

    Airflow's task runner puts the task's exception in the on_failure_callback context on every 3.x, but
    the in-process runner behind dag.test() does so only from 3.3; the DAGs' record_failure reads it.
    """
    from dlh_airflow_common._compat import airflow_at_least

    if airflow_at_least("3.3"):
        yield
        return
    from airflow.sdk.execution_time import task_runner

    original = task_runner.run

    def run(ti: Any, context: Any, log: Any) -> Any:
        state, msg, error = original(ti, context, log)
        context["exception"] = error
        return state, msg, error

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task_runner, "run", run)
        yield


@pytest.fixture(scope="module")
def dags(ops_project: Path, pg: PgServer) -> Any:
    """The DagBag of tests/dags, with the DAGs' connections defined as environment variables."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    os.environ["AIRFLOW_CONN_DUCK_OPS"] = json.dumps(
        {"conn_type": "duckdb", "host": str(_SCRATCH / "ops.duckdb"), "extra": {"threads": 4}})
    os.environ["AIRFLOW_CONN_PG_REFUSED"] = json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": free_port(), "login": "dbt_user",
         "password": CANARY, "schema": "warehouse", "extra": {"connect_timeout": 2}})
    os.environ["AIRFLOW_CONN_PG_OPS"] = json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
         "password": CANARY, "schema": "warehouse", "extra": {"schema": "ops"}})
    bag = DagBag(str(DAG_FILE))  # this file only: other DAG files of the folder render projects
    assert not bag.import_errors, bag.import_errors
    return bag


def _run(dags: Any, dag_id: str) -> Any:
    return dags.get_dag(dag_id).test()


def _run_logged(dags: Any, dag_id: str, capfd: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    """dag.test() plus everything the task logged (structlog events, exceptions) and printed."""
    with capture_logs() as events:
        dr = _run(dags, dag_id)
    out = capfd.readouterr()
    text = "\n".join(" ".join(str(v) for v in e.values()) for e in events)
    return dr, text + out.out + out.err


def _failure(dag_id: str) -> dict[str, str]:
    """The exception recorded by the DAG's on_failure_callback."""
    path = Path(os.environ["DLH_TEST_PROJECT_DIR"]).parent / "failures" / f"{dag_id}.json"
    data: dict[str, str] = json.loads(path.read_text())
    path.unlink()
    return data


def _ti(dr: Any) -> Any:
    return dr.get_task_instance("dbt")


def _xcom(dr: Any, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id="dbt",
                                                 key=key).order_by(XComModel.timestamp.desc()).first()
        return None if row is None else XComModel.deserialize_value(row)


def _dbt_processes() -> list[str]:
    return dbt_processes(RUNTIME)


def _no_dbt_processes(within: float = 10.0) -> bool:
    return no_dbt_processes(RUNTIME, within)


@pytest.mark.parametrize("mode", ["sync", "deferred"])
@pytest.mark.parametrize("warehouse", ["duck", "pg"])
def test_build_success(dags: Any, mode: str, warehouse: str,
                       capfd: pytest.CaptureFixture[str]) -> None:
    with capture_logs() as task_log:
        dr = _run(dags, f"{warehouse}_{mode}_build")
    out = capfd.readouterr()
    assert dr.state == "success", out.out[-4000:]
    result = _xcom(dr)
    assert result["success"] and result["summary"]["counts"] == {"success": 5, "pass": 4, "warn": 1}
    assert [w["unique_id"].split(".")[2] for w in result["summary"]["warnings"]] == [
        "accepted_values_stg_orders_status__completed__shipped__placed"]
    assert "manifest" not in json.dumps(result)  # compact XCom, not the artifacts
    assert CANARY not in json.dumps(result)
    # live progress and the summary reach the task log
    log = "\n".join(str(e.get("event")) for e in task_log)
    assert "OK model.demo.customer_orders" in log and "dbt summary: 10 nodes" in log, log
    assert CANARY not in log + out.out + out.err
    # the run's own artifacts were kept (keep_target_artifacts) and hold exactly this run
    target = Path(result["target_dir"])
    assert len(json.loads((target / "run_results.json").read_text())["results"]) == 10
    # uploads: the four artifacts, compressed, under <dest>/<dag>/<task>/<run>/try1/
    up = Path(os.environ["DLH_TEST_PROJECT_DIR"]).parent / "uploads" / dr.dag_id / "dbt" / dr.run_id / "try1"
    assert sorted(p.name for p in up.iterdir()) == [
        "manifest.json.gz", "run_results.json.gz"] or sorted(p.name for p in up.iterdir()) == [
        "catalog.json.gz", "manifest.json.gz", "run_results.json.gz", "sources.json.gz"]
    assert json.loads(gzip.decompress((up / "run_results.json.gz").read_bytes()))["results"]
    # links
    # the docs the API server serves (the docs plugin is on; dbt_docs_url is its fallback), project overview
    assert _xcom(dr, "_link_DbtDocsLink") == "/dbt-docs/demo/#!/overview"
    assert _xcom(dr, "_link_DbtArtifactsLink") == (
        f"https://artifacts.example.com/dbt/{dr.dag_id}/dbt/{dr.run_id}/")
    if mode == "deferred":
        assert not any((RUNTIME / "deferred").iterdir())  # control dir removed


@pytest.mark.parametrize("mode", ["sync", "deferred"])
@pytest.mark.parametrize("warehouse", ["duck", "pg"])
def test_failing_model_fails_the_task_with_the_node(dags: Any, mode: str, warehouse: str,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    dr, log = _run_logged(dags, f"{warehouse}_{mode}_failing_model", capfd)
    assert dr.state == "failed"
    failure = _failure(dr.dag_id)
    assert failure["type"] == "DbtRuntimeException"
    assert "model.demo.boom [error]" in failure["text"] and "table_that_does_not_exist" in failure["text"]
    assert "return code: 1" in failure["text"] and "command: dbt build --select boom +stg_customers" in failure["text"]
    assert "failed: model.demo.boom [error]" in log  # the run summary in the task log names the node


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_timeout_cancels_dbt_and_cleans_up(dags: Any, mode: str, pg: PgServer,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    dr, log = _run_logged(dags, f"pg_{mode}_timeout", capfd)
    elapsed = time.monotonic() - started
    assert dr.state == "failed"
    failure = _failure(dr.dag_id)
    assert failure["type"] == "DbtTimeoutException" and "timed out after 20s" in failure["text"], failure
    assert "OK seed.demo.raw_customers" in log  # progress up to the cancel reached the task log
    assert elapsed < 60
    assert _no_dbt_processes()
    assert pg.execute("select count(*) from pg_stat_activity where query like '%pg_sleep%' "
                      "and pid <> pg_backend_pid()") == [(0,)]
    runs = [p for p in (RUNTIME / "runs").iterdir() if f"pg_{mode}_timeout" in p.name]
    assert runs == []  # target dir removed (not kept for this DAG)
    assert not (RUNTIME / "deferred").exists() or not any((RUNTIME / "deferred").iterdir())


def test_a_timeout_shorter_than_the_watch_before_deferring_still_counts_from_the_launch(
        dags: Any, pg: PgServer, capfd: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    dr, log = _run_logged(dags, "pg_watched_timeout", capfd)
    elapsed = time.monotonic() - started
    assert dr.state == "failed"
    failure = _failure(dr.dag_id)
    assert failure["type"] == "DbtTimeoutException" and "timed out after 8s" in failure["text"], failure
    assert "dbt still running after 8s; deferring" in log  # not after defer_after's 120 s
    assert elapsed < 60, elapsed  # watch (8 s), Airflow's resume floor (15 s), dbt's cancel
    assert _no_dbt_processes()
    assert pg.execute("select count(*) from pg_stat_activity where query like '%pg_sleep%' "
                      "and pid <> pg_backend_pid()") == [(0,)]


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_retry_resumes_with_dbt_retry(dags: Any, mode: str, capfd: pytest.CaptureFixture[str]) -> None:
    flaky = Path(os.environ["DLH_TEST_PROJECT_DIR"]).parent / "flaky.csv"
    flaky.unlink(missing_ok=True)
    dr, log = _run_logged(dags, f"duck_{mode}_retry_resume", capfd)
    assert dr.state == "success", log[-4000:]
    assert _ti(dr).try_number == 2
    assert "resumes the previous try's failure with `dbt retry`" in log
    target = Path(_xcom(dr)["target_dir"])
    ran = {r["unique_id"] for r in json.loads((target / "run_results.json").read_text())["results"]}
    assert ran == {"model.demo.flaky", "model.demo.flaky_child"}  # only the failed node and its child


def test_a_retry_on_another_host_resumes_from_the_state_in_the_store(
        dags: Any, s3: Any, capfd: pytest.CaptureFixture[str]) -> None:
    from tests.s3server import BUCKET

    flaky = Path(os.environ["DLH_TEST_PROJECT_DIR"]).parent / "flaky.csv"
    flaky.unlink(missing_ok=True)
    dr, log = _run_logged(dags, "duck_sync_retry_resume_store", capfd)
    assert dr.state == "success", log[-4000:]
    assert _ti(dr).try_number == 2
    assert "Fetched the previous try's state from the state store" in log, log[-4000:]
    assert "resumes the previous try's failure with `dbt retry`" in log
    target = Path(_xcom(dr)["target_dir"])
    ran = {r["unique_id"] for r in json.loads((target / "run_results.json").read_text())["results"]}
    assert ran == {"model.demo.flaky", "model.demo.flaky_child"}  # only the failed node and its child
    assert s3.keys(BUCKET, "retry/") == []  # the success cleared it


def test_short_deferrable_run_is_reported_without_deferring(dags: Any,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A resumed task waits MIN_DEFERRAL_SECONDS, so a build that ends sooner is seen from the worker."""
    with capture_logs() as task_log:
        dr = _run(dags, "duck_watched_build")
    out = capfd.readouterr()
    assert dr.state == "success", out.out[-4000:]
    assert _xcom(dr)["summary"]["counts"] == {"success": 5, "pass": 4, "warn": 1}
    log = "\n".join(str(e.get("event")) for e in task_log)
    assert "started detached" in log and "reporting without deferring" in log, log
    assert "deferring" not in log.replace("without deferring", ""), log  # the trigger never ran
    assert log.count("OK model.demo.customer_orders") == 1 and log.count("dbt summary: 10 nodes") == 1, log
    assert not any((RUNTIME / "deferred").iterdir())  # control dir removed


def test_kill_before_deferral_cancels_the_detached_run(dags: Any, pg: PgServer) -> None:
    op = _slow_op(deferrable=True, defer_after=600)
    thread, errors = start_until_sleeping(lambda: op.execute(_context("kill_watched")), pg)  # type: ignore[arg-type]
    assert list((RUNTIME / "deferred").iterdir())  # the run's control dir, while dbt runs
    op.on_kill()  # what Airflow's SIGTERM handler does; it does not raise into execute
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(errors[0], DbtCancelledException), errors
    assert _no_dbt_processes(30)
    assert pg.execute("select count(*) from pg_stat_activity where query like '%pg_sleep%' "
                      "and pid <> pg_backend_pid()") == [(0,)]
    deadline = time.monotonic() + 10  # the supervisor removes the control dir as it exits
    while any((RUNTIME / "deferred").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any((RUNTIME / "deferred").iterdir())
    assert not [p for p in (RUNTIME / "runs").iterdir() if "kill_watched" in p.name]


def test_deferrable_needs_a_declared_shared_runtime_root(dags: Any, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DLH_DBT_SHARED_RUNTIME_ROOT")
    dr, _ = _run_logged(dags, "duck_deferred_build", capfd)
    assert dr.state == "failed"
    failure = _failure(dr.dag_id)
    assert "visible to the triggerer" in failure["text"] and "DLH_DBT_SHARED_RUNTIME_ROOT" in failure["text"]
    assert _no_dbt_processes()


def _context(dag_id: str, try_number: int = 1) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id=dag_id, task_id="dbt", try_number=try_number, run_id="manual__kill")
    return {"ti": ti}


def _slow_op(**kw: Any) -> DbtOperator:
    return DbtOperator(task_id="dbt", command="build", conn_id="pg_ops", select="+slow_model",
                       vars={"slow_seconds": 120}, dbt_project_dir=os.environ["DLH_TEST_PROJECT_DIR"],
                       cancel_grace=10, **kw)


def test_kill_sync_task_leaves_no_process_and_no_target(dags: Any, pg: PgServer) -> None:
    op = _slow_op()
    thread, errors = start_until_sleeping(lambda: op.execute(_context("kill_sync")), pg)  # type: ignore[arg-type]
    op.on_kill()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(errors[0], DbtCancelledException)
    assert _no_dbt_processes()
    assert not [p for p in (RUNTIME / "runs").iterdir() if "kill_sync" in p.name]


def test_kill_deferred_task_cancels_the_detached_run(dags: Any, pg: PgServer) -> None:
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import TaskDeferred

    op = _slow_op(deferrable=True, defer_after=0)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context("kill_deferred"))  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    wait_for_sleep(pg)
    assert _dbt_processes()
    asyncio.run(trigger.on_kill())
    assert _no_dbt_processes(30)
    assert not [p for p in (RUNTIME / "runs").iterdir() if "kill_deferred" in p.name]
    deadline = time.monotonic() + 10  # the supervisor removes the control dir as it exits
    while Path(trigger.control_dir).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(trigger.control_dir).exists()


def test_trigger_serializes_round_trip() -> None:
    from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

    trig = DbtExecutionTrigger("/x/y", check_interval=2, timeout_at=123.0, cancel_grace=5)
    path, kwargs = trig.serialize()
    assert path == "dlh_airflow_common.triggers.dbt.DbtExecutionTrigger"
    assert DbtExecutionTrigger(**kwargs).serialize() == (path, kwargs)


def test_seed_examples_construct_unchanged() -> None:
    """The operator calls written in seeds 001 and 004 keep working as written."""
    from datetime import datetime

    from airflow.sdk import DAG

    with DAG("seed_examples", schedule=None, start_date=datetime(2026, 1, 1)):
        a = DbtOperator(task_id="dbt_run", dbt_command="run", conn_id="dbt_postgres")
        b = DbtOperator(task_id="dbt_run_debug", venv_path="/opt/airflow/venvs/dbt",
                        dbt_project_dir="/opt/airflow/dbt/my_project", dbt_command="run",
                        conn_id="dbt_postgres", keep_target_artifacts=True)
        c = DbtOperator(task_id="dbt_hourly", dbt_command="run", dbt_models=["tag:hourly"],
                        conn_id="dbt_postgres")
        d = DbtOperator(task_id="dbt_run2", venv_path="/opt/airflow/venvs/dbt-venv",
                        dbt_project_dir="/opt/airflow/dbt/my_project", dbt_command="run",
                        conn_id="dbt_dremio_prod", target="prod", deferrable=True, retry_limit=3,
                        upload_artifacts=True, artifacts_conn_id="aws_default",
                        artifacts_bucket="my-dbt-artifacts", schema_override="{{ var.value.schema }}")
    assert a.command == "run" and c.select == ["tag:hourly"] and b.keep_target_artifacts
    assert d.artifacts_destination == "s3://my-dbt-artifacts/dbt-artifacts" and d.deferrable
    assert "schema_override" in DbtOperator.template_fields and "select" in DbtOperator.template_fields


def test_provider_registers_links_and_no_unusable_connection_type() -> None:
    """A ``dbt`` connection type had no profile mapping: registering it only offered a dead form."""
    from importlib.metadata import entry_points

    from dlh_airflow_common.core.exceptions import DbtProfileException
    from dlh_airflow_common.core.profiles import ConnectionInfo, adapter_for

    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("dlh_airflow")]
    info = ep.load()()
    assert "dlh_airflow_common.links.DbtDocsLink" in info["extra-links"]
    assert "dlh_airflow_common.links.DbtArtifactsLink" in info["extra-links"]
    assert "connection-types" not in info and "hook-class-names" not in info
    with pytest.raises(DbtProfileException, match="no dbt profile mapping"):
        adapter_for(ConnectionInfo("x", "dbt"))


def test_lineage_of_a_build_names_input_and_output_tables(dags: Any) -> None:
    """OpenLineage facets for the task come from the run's own manifest and run_results."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from dlh_airflow_common.operators import reporting

    captured: dict[str, Any] = {}
    original = reporting.task_lineage

    def spy(ti: Any, artifacts: Path, profile_output: dict[str, Any]) -> Any:
        captured["lineage"] = original(ti, artifacts, profile_output)
        return captured["lineage"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENLINEAGE__TRANSPORT__TYPE", "console")  # lineage is built only when it can be sent
        mp.setattr(reporting, "task_lineage", spy)
        dr = _run(dags, "duck_sync_build")
    assert dr.state == "success"
    assert captured["lineage"] is not None
    operator_lineage, node_events = captured["lineage"]
    assert isinstance(operator_lineage, OperatorLineage)
    outputs = {d.name for d in operator_lineage.outputs}
    assert outputs == {f"ops.main.{t}" for t in ("raw_customers", "raw_orders", "stg_customers", "stg_orders",
                                                 "customer_orders")}
    assert operator_lineage.inputs == []  # a full build reads only what it builds
    assert {d.namespace for d in operator_lineage.outputs} == {f"duckdb://{_SCRATCH / 'ops.duckdb'}"}
    complete = {e.job.name: e for e in node_events if str(e.eventType).endswith("COMPLETE")}
    (marts,) = [e for name, e in complete.items() if name.endswith("customer_orders.build.run")]
    assert {d.name for d in marts.inputs} == {"ops.main.stg_customers", "ops.main.stg_orders"}
    assert {d.name for d in marts.outputs} == {"ops.main.customer_orders"}


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], float]:
    """What the tasks send to Stats, as {(kind, name): value} (the last value of each)."""
    calls: dict[tuple[str, str], float] = {}

    class Recorder:
        def timing(self, name: str, value: float, tags: Any = None) -> None:
            calls[("timing", name)] = value

        def incr(self, name: str, count: int = 1, tags: Any = None) -> None:
            calls[("incr", name)] = count

    monkeypatch.setattr("dlh_airflow_common.metrics._stats", lambda: Recorder())
    return calls


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_metrics_report_duration_nodes_and_retries(dags: Any, mode: str,
                                                   metrics: dict[tuple[str, str], float]) -> None:
    """Deferred mode resumes on a new operator instance: it must still report the whole run."""
    started = time.monotonic()
    dr = _run(dags, f"duck_{mode}_build")
    wall = time.monotonic() - started
    assert dr.state == "success"
    names = metrics
    assert names[("incr", "dbt.nodes.success")] == 5 and names[("incr", "dbt.nodes.warn")] == 1
    assert names[("incr", "dbt.run.success")] == 1
    # the duration covers the dbt run (a warm 6-node build: 0.5-1 s), not just the resumed method (a few ms)
    assert 300 < names[("timing", "dbt.run.duration")] < wall * 1000


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_metrics_count_transient_retries_of_a_failed_run(dags: Any, mode: str,
                                                        metrics: dict[tuple[str, str], float]) -> None:
    dr = _run(dags, f"pg_{mode}_refused")
    assert dr.state == "failed"
    assert _failure(f"pg_{mode}_refused")["type"] == "DbtConnectionException"
    names = metrics
    assert names[("incr", "dbt.run.failure")] == 1
    assert names[("incr", "dbt.run.retries")] == 1  # two attempts inside the try
    assert names[("timing", "dbt.run.duration")] > 0


def test_upload_leaves_the_four_artifacts_compressed(demo_project: Path, tmp_path: Path,
                                                    runtime_root: Path) -> None:
    from dlh_airflow_common.hooks.dbt import DbtHook
    from dlh_airflow_common.storage import upload_artifacts

    os.environ["AIRFLOW_CONN_UPLOAD_DUCK"] = json.dumps(
        {"conn_type": "duckdb", "host": str(tmp_path / "up.duckdb")})
    target = tmp_path / "target"
    hook = DbtHook(demo_project, conn_id="upload_duck", runtime_root=str(runtime_root))
    hook.run_dbt_task("deps")
    hook = DbtHook(demo_project, conn_id="upload_duck", runtime_root=str(runtime_root), target_path=str(target))
    for command in ("build", "docs generate", "source freshness"):
        hook.run_dbt_task(command)
    written = upload_artifacts(target, f"file://{tmp_path / 'store'}", None, "dag", "task", "run", "try1")
    folder = tmp_path / "store" / "dag" / "task" / "run" / "try1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "catalog.json.gz", "manifest.json.gz", "run_results.json.gz", "sources.json.gz"]
    assert len(written) == 4
    assert "source.demo.shop.raw_orders" in gzip.decompress((folder / "sources.json.gz").read_bytes()).decode()
    # a destination that cannot be written only warns
    assert upload_artifacts(target, "file:///proc/no-such-dir", None, "x") == []


def test_trigger_reports_a_dead_supervisor_with_its_output(tmp_path: Path) -> None:
    import socket

    from dlh_airflow_common.core.detached import ControlDir
    from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

    gone = subprocess.Popen(["true"])
    gone.wait()
    ctl = ControlDir(tmp_path)
    ctl.write_status(state="running", host=socket.gethostname(), pid=gone.pid, heartbeat=time.time())
    ctl.progress.write_text("Traceback (most recent call last):\nImportError: boom\n")
    trigger = DbtExecutionTrigger(str(tmp_path), check_interval=0.1)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(asyncio.wait_for(first_event(), 30))
    assert payload["status"] == "error"
    assert "exited without a result" in payload["message"] and "ImportError: boom" in payload["message"]


def test_a_detached_producer_gets_the_store_credentials_only_in_its_environment(
        dags: Any, pg: PgServer, s3: Any) -> None:
    """Not in argv, not on disk, not in dbt's environment; killed, the run is marked cancelled in the store."""
    from dlh_airflow_common.core.store import STORE_OPTIONS_ENV
    from dlh_airflow_common.core.store_stream import stream_key
    from dlh_airflow_common.core.stream import current_launch, stream_dir
    from tests.processes import descendants
    from tests.s3server import BUCKET, CONN_ID, SECRET_KEY

    op = _slow_op(stream_nodes=True, state_store=f"s3://{BUCKET}/secrets", state_store_conn_id=CONN_ID)
    context = _context("store_secret")
    thread, errors = start_until_sleeping(lambda: op.execute(context), pg)  # type: ignore[arg-type]
    try:
        launch = current_launch(stream_dir(RUNTIME, "store_secret", "manual__kill"))
        assert launch is not None
        supervisor = json.loads((launch / "status.json").read_text())["pid"]
        assert STORE_OPTIONS_ENV.encode() in Path(f"/proc/{supervisor}/environ").read_bytes()
        for pid in descendants(supervisor):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert SECRET_KEY.encode() not in cmdline, cmdline
            if pid != supervisor:  # dbt and what it starts: the supervisor took the options out
                assert STORE_OPTIONS_ENV.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        for path in RUNTIME.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET_KEY.encode() not in path.read_bytes(), path
    finally:
        op.on_kill()
        thread.join(60)
    assert not thread.is_alive() and isinstance(errors[0], DbtCancelledException), errors
    assert _no_dbt_processes()
    prefix = f"secrets/{'/'.join(stream_key('store_secret', 'manual__kill'))}/"
    (status_key,) = [k for k in s3.keys(BUCKET, prefix) if k.endswith("/status.json")]
    status = json.loads(s3.read(BUCKET, status_key))
    assert status["state"] == "cancelled" and status.get("cancel_requested"), status


def test_a_deferred_run_is_watched_and_resumed_through_the_store(
        dags: Any, s3: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """No shared runtime root declared: the trigger and the resumed task read only the store."""
    from tests.s3server import BUCKET

    monkeypatch.delenv("DLH_DBT_SHARED_RUNTIME_ROOT")
    dr, log = _run_logged(dags, "duck_deferred_build_store", capfd)
    assert dr.state == "success", log[-4000:]
    assert _xcom(dr)["summary"]["counts"].get("success"), _xcom(dr)
    # the resumed task reported from the artifacts it fetched from the store
    up = Path(os.environ["DLH_TEST_PROJECT_DIR"]).parent / "uploads" / dr.dag_id / "dbt" / dr.run_id / "try1"
    assert (up / "run_results.json.gz").is_file() and (up / "manifest.json.gz").is_file()
    # the progress came through the store (relayed by the trigger), and the run's objects went on resume
    assert "dbt summary:" in log or "Completed successfully" in log, log[-3000:]
    assert s3.keys(BUCKET, "deferred-test/deferred/") == []
    counts = next(line for line in log.splitlines() if "State store requests of this run" in line)
    print(counts)
    assert "'supervisor': {" in counts and "'trigger': {" in counts, counts
    deadline = time.monotonic() + 15  # the supervisor removes its local dir: the task resumed from the store
    while time.monotonic() < deadline and any(
            "duck_deferred_build_store" in p.read_text() for p in (RUNTIME / "deferred").glob("*/spec.json")):
        time.sleep(0.2)
    assert not any("duck_deferred_build_store" in p.read_text() for p in (RUNTIME / "deferred").glob("*/spec.json"))
