"""OpenLineage from real dbt artifacts: a DuckDB build of the demo project, parsed in memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, add_model

pytest.importorskip("openlineage.common.provider.dbt")
pytest.importorskip("airflow.providers.openlineage")

from openlineage.client.event_v2 import RunState
from openlineage.client.serde import Serde
from openlineage.common.provider.dbt.facets import ParentRunMetadata

from dlh_airflow_common.lineage import build_operator_lineage

DBT = str(Path(sys.executable).parent / "dbt")
JOB_NS = "airflow-test"
MODELS = {"stg_customers", "stg_orders", "customer_orders"}
SEEDS = {"raw_customers", "raw_orders"}


def _dbt(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    env.pop("DBT_TARGET_PATH", None)
    return subprocess.run([DBT, *args, "--project-dir", str(project), "--profiles-dir",
                           str(project.parent / "profiles")], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project after `dbt deps` + `dbt build` on DuckDB (artifacts in its target/)."""
    tmp = tmp_path_factory.mktemp("lineage")
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, tmp / name)
    (tmp / "profiles").mkdir()
    (tmp / "profiles" / "profiles.yml").write_text(
        f"demo:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp / 'wh.duckdb'}\n      schema: main\n")
    project = tmp / "demo_project"
    for cmd in (["deps"], ["build"]):
        proc = _dbt(project, *cmd)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return project


def _duck(project: Path) -> dict[str, Any]:
    return {"type": "duckdb", "path": str(project.parent / "wh.duckdb"), "schema": "main"}


def _node(event: Any) -> str:
    return str(event.job.facets["dbt_node"].unique_id)


def _names(datasets: Any) -> set[str]:
    return {d.name for d in datasets}


def test_build_lineage_names_every_dataset_the_run_wrote(built: Path) -> None:
    lineage, events = build_operator_lineage(built / "target", adapter_type="duckdb",
                                             profile_output=_duck(built), job_namespace=JOB_NS)
    ns = f"duckdb://{built.parent / 'wh.duckdb'}"
    # DuckDB's database is the file stem: <db>.<schema>.<table>
    assert {(d.namespace, d.name) for d in lineage.outputs} == {
        (ns, f"wh.main.{t}") for t in MODELS | SEEDS}
    assert all(type(d).__name__ == "OutputDataset" for d in lineage.outputs)
    assert lineage.inputs == []  # everything read was built by this same run

    completes = [e for e in events if e.eventType == RunState.COMPLETE]
    assert not [e for e in events if e.eventType == RunState.FAIL]
    results = json.loads((built / "target" / "run_results.json").read_text())["results"]
    ok_models = sorted(r["unique_id"] for r in results
                       if r["unique_id"].startswith("model.") and r["status"] == "success")
    assert ok_models == sorted(f"model.demo.{m}" for m in MODELS)
    model_completes = [e for e in completes if e.job.facets["jobType"].jobType == "MODEL"]
    assert sorted(_node(e) for e in model_completes) == ok_models  # exactly one per model

    by_node = {_node(e): e for e in model_completes}
    co = by_node["model.demo.customer_orders"]
    assert co.job.namespace == JOB_NS and co.job.name == "wh.main.demo.customer_orders.build.run"
    assert _names(co.inputs) == {"wh.main.stg_customers", "wh.main.stg_orders"}
    assert [(o.namespace, o.name) for o in co.outputs] == [(ns, "wh.main.customer_orders")]
    assert "sql" in co.job.facets and co.run.facets["dbt_run"].dbt_runtime == "core"
    # seeds feed the staging models (the library alone drops these inputs)
    assert _names(by_node["model.demo.stg_orders"].inputs) == {"wh.main.raw_orders"}
    assert _names(by_node["model.demo.stg_customers"].inputs) == {"wh.main.raw_customers"}

    seed_completes = [e for e in completes if e.job.facets["jobType"].jobType == "SEED"]
    assert sorted(_node(e) for e in seed_completes) == sorted(f"seed.demo.{s}" for s in SEEDS)
    raw_orders = next(e for e in seed_completes if _node(e) == "seed.demo.raw_orders")
    assert raw_orders.job.name == "wh.main.demo.raw_orders.build.seed"
    assert raw_orders.outputs[0].outputFacets["outputStatistics"].rowCount == 6

    # tests: one aggregate event per tested model, carrying the assertions
    tests = [e for e in completes if e.job.facets["jobType"].jobType == "TEST"]
    assert {e.job.name for e in tests} == {"wh.main.demo.stg_customers.build.test",
                                           "wh.main.demo.stg_orders.build.test"}

    # every node run has a START and a COMPLETE sharing its runId; all events serialize
    starts = {e.run.runId for e in events if e.eventType == RunState.START}
    assert starts == {e.run.runId for e in completes}
    for e in events:
        json.loads(Serde.to_json(e))


def test_partial_run_reads_what_it_did_not_build(built: Path) -> None:
    proc = _dbt(built, "run", "-s", "customer_orders", "--target-path", "target_partial")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lineage, events = build_operator_lineage(built / "target_partial", profile_output=_duck(built),
                                             job_namespace=JOB_NS)
    assert _names(lineage.outputs) == {"wh.main.customer_orders"}
    assert _names(lineage.inputs) == {"wh.main.stg_customers", "wh.main.stg_orders"}
    assert all(type(d).__name__ == "InputDataset" for d in lineage.inputs)
    # `dbt run` jobs keep the library's plain names
    assert {e.job.name for e in events} == {"wh.main.demo.customer_orders"}


def test_failed_model_has_a_fail_event_and_no_output(built: Path) -> None:
    add_model(built, "broken_orders", "select no_such_column from {{ ref('stg_orders') }}")
    try:
        proc = _dbt(built, "run", "-s", "broken_orders", "--target-path", "target_failed")
    finally:
        (built / "models" / "marts" / "broken_orders.sql").unlink()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lineage, events = build_operator_lineage(built / "target_failed", profile_output=_duck(built),
                                             job_namespace=JOB_NS)
    assert [(e.eventType, e.job.name) for e in events] == [
        (RunState.START, "wh.main.demo.broken_orders"), (RunState.FAIL, "wh.main.demo.broken_orders")]
    assert lineage.outputs == []
    assert _names(lineage.inputs) == {"wh.main.stg_orders"}


def test_postgres_target_names_and_parent_without_touching_secrets(built: Path) -> None:
    secret = "{{ env_var('DBT_ENV_SECRET_PASSWORD') }}"
    profile = {"type": "postgres", "host": "127.0.0.1", "dbname": "warehouse", "schema": "s",
               "user": "u", "password": secret}
    parent = ParentRunMetadata(run_id="01964c5f-3c1e-7a3b-9a5c-0123456789ab", job_name="dag.task",
                               job_namespace=JOB_NS)
    lineage, events = build_operator_lineage(built / "target", adapter_type="postgres",
                                             profile_output=profile, job_namespace=JOB_NS,
                                             parent_run=parent)
    assert {d.namespace for d in lineage.outputs} == {"postgres://127.0.0.1:5432"}  # default port
    assert profile["password"] == secret and "port" not in profile  # caller's dict left alone
    assert all(e.run.facets["parent"].run.runId == parent.run_id
               and e.run.facets["parent"].job.name == "dag.task" for e in events)
    dumped = "".join(Serde.to_json(e) for e in events)
    assert "env_var" not in dumped and "DBT_ENV_SECRET" not in dumped and '"u"' not in dumped


def test_command_without_lineage_gives_nothing(built: Path) -> None:
    proc = _dbt(built, "compile", "-s", "customer_orders", "--target-path", "target_compile")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lineage, events = build_operator_lineage(built / "target_compile", profile_output=_duck(built),
                                             job_namespace=JOB_NS)
    assert events == [] and lineage.inputs == [] and lineage.outputs == []


def test_module_imports_without_openlineage() -> None:
    code = ("import sys\n"
            "for m in ('openlineage', 'airflow.providers.openlineage'): sys.modules[m] = None\n"
            "import dlh_airflow_common.lineage as m\n"
            "assert callable(m.build_operator_lineage)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
