"""The Salesforce pipeline end to end through real Airflow: extraction DAG then transformation DAG."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlh_airflow_common.core.assets import DbtAssetUriException
from dlh_airflow_common.docs import DocsError, DocsSite
from tests.conftest import REPO
from tests.pgserver import PgServer

DAGS = REPO / "tests" / "dags"
sys.path.insert(0, str(REPO / "pipelines" / "salesforce" / "dags"))

from salesforce_lib.assets import project as raw_project  # noqa: E402
from salesforce_lib.assets import raw_assets  # noqa: E402
from salesforce_lib.generator import FakeOrg  # noqa: E402
from salesforce_lib.state import last_success  # noqa: E402

CONTACT_LINEAGE = {"stg_salesforce__contacts", "int_salesforce__contacts_current", "dim_salesforce__contacts"}


@pytest.fixture(params=["duckdb", "postgres", "duckdb-nodes"])
def pipeline(request: pytest.FixtureRequest, tmp_path: Path, airflow_db: None) -> Iterator[dict[str, Any]]:
    from airflow.dag_processing.dagbag import DagBag

    env = {
        "SALESFORCE_SOURCE": "generator",
        "SALESFORCE_GENERATOR_STATE": str(tmp_path / "org.json"),
        "SALESFORCE_DBT_STATE_DIR": str(tmp_path / "state"),
    }
    env["SALESFORCE_DBT_SHAPE"] = "nodes" if request.param.endswith("-nodes") else "single"
    if request.param.startswith("duckdb"):
        env["AIRFLOW_CONN_WAREHOUSE"] = json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "wh.duckdb")})
    else:
        pg: PgServer = request.getfixturevalue("pg")
        pg.execute("drop database if exists sf_pipeline")
        pg.execute("create database sf_pipeline")
        env["AIRFLOW_CONN_WAREHOUSE"] = json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "postgres",
             "password": "postgres", "schema": "sf_pipeline"})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    org = FakeOrg(env["SALESFORCE_GENERATOR_STATE"])
    org.populate()
    org.save()
    bags = [DagBag(str(DAGS / f"{name}.py")) for name in ("salesforce_extract", "salesforce_dbt")]
    for one in bags:
        assert not one.import_errors, one.import_errors
    bag = SimpleNamespace(get_dag=lambda dag_id: next(b.dags[dag_id] for b in bags if dag_id in b.dags))
    try:
        yield {"bag": bag, "org_path": env["SALESFORCE_GENERATOR_STATE"], "kind": request.param}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(bag: Any, dag_id: str) -> dict[str, str]:
    states, _ = _run_with_events(bag, dag_id)
    return states


def _run_with_events(bag: Any, dag_id: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Task states of one run, and its asset events (raw table -> extras)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    dr = bag.get_dag(dag_id).test()
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert dr.state == "success", states
    with create_session() as session:
        events = {str(row.asset.uri).rsplit("/", 1)[-1]: dict(row.extra or {}) for row in session.query(
            AssetEvent).filter(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == dr.run_id)}
    return states, events


def _models_rebuilt() -> set[str]:
    state = last_success()
    assert state is not None
    results = json.loads((state / "run_results.json").read_text())["results"]
    return {r["unique_id"].split(".")[-1] for r in results if r["unique_id"].startswith("model.")}


def _models_downstream_of(node: str) -> set[str]:
    state = last_success()
    assert state is not None
    children = json.loads((state / "manifest.json").read_text())["child_map"]
    seen: set[str] = set()
    todo = [node]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return {n.split(".")[-1] for n in seen if n.startswith("model.")}


def _node_models(states: dict[str, str], state: str) -> set[str]:
    """Models whose node task (shape `nodes`) ended in ``state``."""
    return {t.split(".", 2)[2] for t, s in states.items() if t.startswith("dbt_build.model.") and s == state}


def _docs_version() -> str | None:
    try:
        return DocsSite().version("salesforce")
    except DocsError:
        return None


def test_guard_skips_without_new_data_and_rebuilds_only_changed_lineage(pipeline: dict[str, Any]) -> None:
    bag = pipeline["bag"]
    nodes = pipeline["kind"].endswith("-nodes")
    docs_before = _docs_version()
    dbt_dag = bag.get_dag("salesforce_dbt")  # scheduled on any of the raw tables the extraction emits
    raw = {obj: asset.uri for obj, asset in raw_assets().items()}
    assert type(dbt_dag.timetable.asset_condition).__name__ == "AssetAny"
    assert {a.uri for a in dbt_dag.timetable.asset_condition.objects} == set(raw.values())
    with pytest.raises(DbtAssetUriException, match="reads no source table salesforce.lead"):
        raw_project().source_asset("salesforce", "lead")  # a clear error, naming what it does read
    _, landed = _run_with_events(bag, "salesforce_extract")
    assert set(landed) == {"account", "contact", "opportunity"}, landed  # every object received rows
    assert all(e["rows_changed"] > 0 for e in landed.values()), landed
    first = _run(bag, "salesforce_dbt")
    assert first["record_success"] == "success"
    if nodes:  # one task per node; without state every node is chosen
        assert _node_models(first, "skipped") == set() and "fct_salesforce__opportunities" in _node_models(
            first, "success")
    else:
        assert first["dbt_build"] == "success"
        assert "fct_salesforce__opportunities" in _models_rebuilt()  # no state yet: full build
    assert first["dbt_docs_generate"] == "success"  # and it published a new docs site
    assert _docs_version() not in (None, docs_before)

    # no new data: no asset event (the dbt DAG is not woken); run by hand, the guard short-circuits it
    _, landed = _run_with_events(bag, "salesforce_extract")
    assert landed == {}, landed
    second = _run(bag, "salesforce_dbt")
    assert second["check_for_new_raw_data"] == "success"
    assert {s for t, s in second.items() if t != "check_for_new_raw_data"} == {"skipped"}, second

    # new contacts only: only the contact lineage is rebuilt
    org = FakeOrg(pipeline["org_path"])
    org.new_contacts(3)
    org.save()
    _, landed = _run_with_events(bag, "salesforce_extract")
    assert set(landed) == {"contact"} and landed["contact"]["rows_changed"] == 3, landed
    third = _run(bag, "salesforce_dbt")
    rebuilt = _node_models(third, "success") if nodes else _models_rebuilt()
    if nodes:  # the other node tasks skipped: dbt did not choose them
        assert _node_models(third, "skipped") and third["record_success"] == "success"
    else:
        assert third["dbt_build"] == "success"
    assert CONTACT_LINEAGE <= rebuilt, rebuilt
    assert rebuilt == _models_downstream_of("source.salesforce.salesforce.contact"), rebuilt
    assert not {m for m in rebuilt if "opportunit" in m}, rebuilt
