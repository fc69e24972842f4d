"""Every dbt model an Airflow asset: URIs per adapter, and events only for what a task built.

The DAG tests run real dbt through real Airflow (``dag.test()``) on the generated project of
tests/render_project.py (DuckDB; ``boom`` fails with vars {"boom": True}, ``boom_child`` is then
skipped) and read the events back from the metadata DB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from dlh_airflow_common.core.assets import (
    DbtAssetUriException,
    Relation,
    asset_namespace,
    built_nodes,
)
from dlh_airflow_common.core.profiles import ConnectionInfo, render_profile
from tests.conftest import _SCRATCH, CANARY, REPO
from tests.pgserver import PgServer

PROJECT = Path(os.environ["DLH_RENDER_PROJECT_DIR"])
DAG_FILE = REPO / "tests" / "dags" / "asset_dbt_dags.py"
FLAKY_CSV = PROJECT.parent / "assets_flaky.csv"
DUCK_FILE = _SCRATCH / "render.duckdb"
FAILED = "dbt_assets_of_failed_builds"  # the rendered teardown (operators/failed_builds.py)
ORDERS = Relation("analytics", "public", "orders")

# One connection per mapped adapter, each with the canary as its password (or token, or key passphrase).
CONNECTIONS = {
    "postgres": ConnectionInfo("c", "postgres", host="pg.example.com", login="u", password=CANARY,
                               schema="analytics"),
    "redshift": ConnectionInfo("c", "redshift", host="rs.example.com", login="u", password=CANARY,
                               schema="analytics"),
    "snowflake": ConnectionInfo("c", "snowflake", host="xy12345", login="u", password=CANARY, schema="PUBLIC",
                                extra={"database": "ANALYTICS", "warehouse": "WH", "region": "eu-west-1"}),
    "bigquery": ConnectionInfo("c", "google_cloud_platform", schema="public",
                               extra={"project": "my-project", "keyfile_dict": {"private_key": CANARY}}),
    "trino": ConnectionInfo("c", "trino", host="trino.example.com", port=443, login="u", password=CANARY,
                            schema="public", extra={"catalog": "hive"}),
    "dremio": ConnectionInfo("c", "dremio", host="dremio.example.com", login="u", password=CANARY,
                             schema="public"),
    "databricks": ConnectionInfo("c", "databricks", host="https://dbc-1.cloud.databricks.com/",
                                 password=CANARY, schema="public", extra={"http_path": "/sql/1", "catalog": "main"}),
    "duckdb": ConnectionInfo("c", "duckdb", host="/data/warehouse.duckdb",
                             extra={"settings": {"s3_secret_access_key": CANARY}}),
}
EXPECTED = {
    "postgres": "postgres://pg.example.com:5432/analytics/public/orders",
    "redshift": "redshift://rs.example.com:5439/analytics/public/orders",
    "snowflake": "snowflake://xy12345.eu-west-1.aws/analytics.public.orders",
    "bigquery": "bigquery://analytics/public/orders",
    "trino": "trino://trino.example.com:443/analytics/public/orders",
    "dremio": "dremio://dremio.example.com:9047/analytics.public.orders",
    "databricks": "databricks://dbc-1.cloud.databricks.com/analytics.public.orders",
    "duckdb": "duckdb:/data/warehouse.duckdb/public/orders",
}


def _target(adapter: str) -> dict[str, Any]:
    rendered = render_profile(CONNECTIONS[adapter], profile_name="p", target_name="t")
    assert CANARY in json.dumps(rendered.env)  # the canary is a secret of this profile
    return dict(rendered.document["p"]["outputs"]["t"])


@pytest.mark.parametrize("adapter", sorted(CONNECTIONS))
def test_one_uri_per_relation_for_every_mapped_adapter_without_a_secret(adapter: str) -> None:
    from airflow.sdk import Asset

    uri = asset_namespace(_target(adapter), env={}).uri(ORDERS)
    assert uri == EXPECTED[adapter]
    assert CANARY not in uri
    assert Asset(uri).uri == uri  # already in the form Airflow keeps


@pytest.mark.parametrize("adapter", sorted(CONNECTIONS))
def test_the_unchecked_asset_of_a_render_equals_the_checked_one(adapter: str) -> None:
    """table_asset skips Asset.__init__ (its URI check is most of a 5,000-model render's asset cost)."""
    from airflow.sdk import Asset

    from dlh_airflow_common.assets import table_asset

    uri = EXPECTED[adapter]
    fast, checked = table_asset(uri), Asset(name=uri, uri=uri)
    assert fast == checked and repr(fast) == repr(checked)
    try:
        assert hash(fast) == hash(checked)
    except TypeError:  # Airflow 3.1 hashes every field, its extra dict too: neither is hashable there
        with pytest.raises(TypeError):
            hash(checked)
    assert fast.extra is not table_asset(uri).extra  # nothing mutable shared between assets


def test_postgres_and_redshift_uris_are_their_providers_own_form() -> None:
    pytest.importorskip("airflow.providers.postgres", reason="the postgres provider is in the dev group only")
    from airflow.providers.amazon.aws.assets.redshift import sanitize_uri as redshift_sanitize
    from airflow.providers.postgres.assets.postgres import sanitize_uri as postgres_sanitize

    for adapter, sanitize in (("postgres", postgres_sanitize), ("redshift", redshift_sanitize)):
        ns = asset_namespace({"type": adapter, "host": "pg", "dbname": "w", "port": 6543}, env={})
        for relation in (ORDERS, Relation(None, "ops", "t"), Relation("w", "my schema", "a/b")):
            uri = ns.uri(relation)
            assert urlunsplit(sanitize(urlsplit(uri))) == uri, uri
        assert ns.uri(Relation(None, "ops", "t")) == f"{adapter}://pg:6543/w/ops/t"  # the profile's database


def test_bigquery_and_trino_uris_have_their_providers_parts() -> None:
    """The Google and Trino providers (not installed here) want bigquery://project/dataset/table and
    trino://host:port/catalog/schema/table."""
    bq = urlsplit(asset_namespace(_target("bigquery"), env={}).uri(Relation(None, "ds", "t")))
    assert (bq.netloc, bq.path.split("/")) == ("my-project", ["", "ds", "t"])
    trino = urlsplit(asset_namespace(_target("trino"), env={}).uri(ORDERS))
    assert trino.port == 443 and len(trino.path.split("/")) == 4


def test_openlineage_named_adapters_match_our_lineage_namespaces() -> None:
    """Snowflake, Databricks, Dremio: <the namespace our OpenLineage events use>/<name>."""
    from openlineage.common.provider.dbt.processor import Adapter

    from dlh_airflow_common.lineage import _processor_class

    for adapter in ("snowflake", "databricks", "dremio"):
        target = _target(adapter)
        processor = _processor_class()({}, {}, {}, None, producer="p", job_namespace="j")
        processor.adapter_type = Adapter[adapter.upper()]
        namespace = processor.extract_namespace(target)
        assert asset_namespace(target, env={}).uri(ORDERS) == f"{namespace}/analytics.public.orders"


def test_duckdb_paths_become_absolute_and_never_carry_a_token(tmp_path: Path) -> None:
    relative = asset_namespace({"type": "duckdb", "path": "dev.duckdb"}, env={}, project_dir=tmp_path)
    assert relative.uri(Relation("dev", "main", "t")) == f"duckdb:{tmp_path}/dev.duckdb/main/t"
    attached = asset_namespace({"type": "duckdb", "path": "/a/main.duckdb",
                                "attach": [{"path": "/b/other.duckdb", "alias": "other"}]}, env={})
    assert attached.uri(Relation("other", "s", "t")) == "duckdb:/b/other.duckdb/s/t"
    assert attached.uri(Relation("main", "s", "t")) == "duckdb:/a/main.duckdb/s/t"
    motherduck = asset_namespace({"type": "duckdb", "path": f"md:prod?motherduck_token={CANARY}"}, env={})
    assert CANARY not in motherduck.uri(ORDERS)
    with pytest.raises(DbtAssetUriException, match="in-memory"):
        asset_namespace({"type": "duckdb", "path": ":memory:"}, env={})


def test_address_fields_that_could_carry_a_secret_are_refused() -> None:
    with pytest.raises(DbtAssetUriException, match="secret variable"):
        asset_namespace({"type": "postgres", "host": "{{ env_var('DBT_ENV_SECRET_HOST') }}", "dbname": "w"},
                        env={"DBT_ENV_SECRET_HOST": "h"})
    with pytest.raises(DbtAssetUriException, match="bare host"):
        asset_namespace({"type": "postgres", "host": f"u:{CANARY}@h", "dbname": "w"}, env={})
    with pytest.raises(DbtAssetUriException, match="No asset URI mapping for dbt adapter 'oracle'"):
        asset_namespace({"type": "oracle"}, env={})
    plain = asset_namespace({"type": "postgres", "host": "{{ env_var('PGHOST') }}", "dbname": "w"},
                            env={"PGHOST": "db1"})
    assert plain.uri(ORDERS).startswith("postgres://db1:5432/")


def test_built_nodes_are_the_successful_models_seeds_and_snapshots() -> None:
    def node(name: str, kind: str = "model", **config: str) -> dict[str, Any]:
        return {"database": "d", "schema": "s", "alias": f"{name}_t", "name": name, "config": config}

    manifest = {"nodes": {"model.p.ok": node("ok"), "model.p.bad": node("bad"), "model.p.skip": node("skip"),
                          "seed.p.s": node("s", "seed"), "snapshot.p.snap": node("snap", "snapshot"),
                          "test.p.t": node("t", "test"), "model.p.eph": node("eph", materialized="ephemeral")}}
    results = {"results": [
        {"unique_id": "model.p.ok", "status": "success", "execution_time": 1.5,
         "adapter_response": {"rows_affected": 3}},
        {"unique_id": "model.p.bad", "status": "error"}, {"unique_id": "model.p.skip", "status": "skipped"},
        {"unique_id": "seed.p.s", "status": "success", "adapter_response": {"rows_affected": -1}},
        {"unique_id": "snapshot.p.snap", "status": "success"}, {"unique_id": "test.p.t", "status": "pass"},
        {"unique_id": "model.p.eph", "status": "success"}]}
    built = {b.unique_id: b for b in built_nodes(results, manifest)}
    assert set(built) == {"model.p.ok", "seed.p.s", "snapshot.p.snap"}
    assert built["model.p.ok"].relation == Relation("d", "s", "ok_t") and built["model.p.ok"].rows_affected == 3
    assert built["model.p.ok"].execution_time == 1.5 and built["seed.p.s"].rows_affected is None
    # a node task knows its relation: no manifest, only its own node
    alone = built_nodes(results, only={"model.p.ok", "model.p.bad"})
    assert [(b.unique_id, b.relation, b.rows_affected) for b in alone] == [("model.p.ok", None, 3)]


# -- real dbt, real Airflow ----------------------------------------------------------------------------
def _events(dr: Any) -> dict[str, list[dict[str, Any]]]:
    """The asset events of one DAG run, by the dbt node each names (uri -> extras for others)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(AssetEvent.source_dag_id == dr.dag_id,
                                                AssetEvent.source_run_id == dr.run_id).all()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            extra = dict(row.extra or {})
            found.setdefault(str(extra.get("dbt_unique_id") or row.asset.uri), []).append(
                {**extra, "uri": row.asset.uri, "task_id": row.source_task_id})
    return found


def _xcom(dr: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id,
                                                 key=key).first()
        return None if row is None else XComModel.deserialize_value(row)


def _duck_uri(name: str, schema: str = "main") -> str:
    return f"duckdb:{DUCK_FILE.resolve()}/{schema}/{name}"


@pytest.fixture(scope="module")
def bag(airflow_db: None) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _assert_extras(event: dict[str, Any], dr: Any) -> None:
    assert event["dbt_status"] == "success" and event["dag_run_id"] == dr.run_id
    assert event["execution_time_s"] > 0 and len(event["dbt_invocation_id"]) == 36
    assert "rows_affected" in event
    assert CANARY not in json.dumps(event)


def test_nodes_shape_emits_per_built_node_and_none_for_a_failed_model_or_its_skipped_child(bag: Any) -> None:
    dag = bag.get_dag("assets_nodes_boom")
    mart = dag.task_dict["model.mart_1"]
    assert [o.uri for o in mart.outlets] == [_duck_uri("mart_1")]
    assert [i.uri for i in dag.task_dict["model.stg_events"].inlets] == [_duck_uri("ext_events")]  # a source
    dr = dag.test()
    assert dr.state == "failed"
    events = _events(dr)
    for uid in ("seed.gen.raw_events", "model.gen.stg_a", "model.gen.stg_b", "model.gen.mart_1",
                "model.gen.mart_2", "model.gen.flaky", "model.gen.stg_events"):
        assert len(events[uid]) == 1, (uid, sorted(events))
        _assert_extras(events[uid][0], dr)
    assert events["model.gen.mart_1"][0]["uri"] == _duck_uri("mart_1")
    assert events["seed.gen.raw_events"][0]["rows_affected"] == 3  # dbt-duckdb reports a seed's rows
    assert "model.gen.boom" not in events and "model.gen.boom_child" not in events
    assert _duck_uri("boom") not in {e["uri"] for es in events.values() for e in es}


def test_single_shape_emits_what_its_build_selected_through_its_alias(bag: Any) -> None:
    dag = bag.get_dag("assets_single")
    build = dag.task_dict["dbt_build"]
    assert [o.name for o in build.outlets] == [f"dbt/{dag.dag_id}/dbt_build"]
    dr = dag.test()
    assert dr.state == "success"
    events = _events(dr)
    assert set(events) == {"seed.gen.raw_events", "model.gen.stg_a", "model.gen.stg_b", "model.gen.int_x",
                           "model.gen.mart_1"}  # not the ephemeral int_eph, nor unselected mart_2
    assert {e["task_id"] for es in events.values() for e in es} == {"dbt_build"}
    _assert_extras(events["model.gen.mart_1"][0], dr)
    assert events["model.gen.mart_1"][0]["uri"] == _duck_uri("mart_1")


def test_a_failed_single_build_emits_what_it_built_through_the_teardown(bag: Any) -> None:
    """Airflow drops the events of a failed task: boom fails the one build, and the rendered teardown
    emits the nodes it built before (not boom, not its skipped child); after a green build it skips."""
    dag = bag.get_dag("assets_single_boom")
    teardown = dag.task_dict[FAILED]
    assert teardown.is_teardown and teardown.upstream_task_ids == {"dbt_build"}
    assert teardown.trigger_rule == "one_failed"  # skipped by the scheduler after a green build: no worker
    assert [o.name for o in teardown.outlets] == ["dbt/assets_single_boom/dbt_build"]
    ok = bag.get_dag("assets_single_ok").test()
    assert ok.state == "success" and {"model.gen.boom", "model.gen.boom_child"} <= set(_events(ok))
    assert {e["task_id"] for es in _events(ok).values() for e in es} == {"dbt_build"}
    assert ok.get_task_instance(FAILED).state == "skipped"
    failed = dag.test()
    assert failed.state == "failed" and failed.get_task_instance(FAILED).state == "success"
    events = _events(failed)
    assert events and "model.gen.boom" not in events and "model.gen.boom_child" not in events, sorted(events)
    assert set(events) == set(_events(ok)) - {"model.gen.boom", "model.gen.boom_child"}
    for uid, found in events.items():
        assert [e["task_id"] for e in found] == [FAILED], (uid, found)
        _assert_extras(found[0], failed)
    # What it emitted is recorded for a later try of dbt_build (a clear) to leave out, not announce again.
    from dlh_airflow_common.operators.failed_builds import EMITTED_KEY, emitted_by_teardown

    recorded = _xcom(failed, FAILED, EMITTED_KEY)
    assert sorted(uid for _, uid, _ in recorded) == sorted(events), recorded
    assert {(uid, inv) for task, uid, inv in recorded if task == "dbt_build"} == {
        (uid, found[0]["dbt_invocation_id"]) for uid, found in events.items()}

    class _Ti:  # a later try's task instance in this run: it reads the teardown's XCom
        def xcom_pull(self, task_ids: str, key: str) -> Any:
            return _xcom(failed, task_ids, key)

    done = emitted_by_teardown(dag.task_dict["dbt_build"], {"ti": _Ti()})  # type: ignore[arg-type]
    assert done == {(uid, found[0]["dbt_invocation_id"]) for uid, found in events.items()}


def test_a_failed_streamed_producer_emits_what_it_built_through_the_teardown(bag: Any) -> None:
    dag = bag.get_dag("assets_streamed_boom")
    assert dag.task_dict[FAILED].upstream_task_ids == {"dbt_producer"}
    dr = dag.test()
    assert dr.state == "failed" and dr.get_task_instance("dbt_producer").state == "failed"
    events = _events(dr)
    assert "model.gen.boom" not in events and "model.gen.boom_child" not in events, sorted(events)
    assert {"seed.gen.raw_events", "model.gen.stg_b"} <= set(events), sorted(events)
    assert {e["task_id"] for es in events.values() for e in es} == {FAILED}


def test_streamed_producer_emits_every_node_it_built_and_node_tasks_none(bag: Any) -> None:
    """Node tasks end in the triggerer (no events there on Airflow 3.3): the producer's alias carries
    them all, registered when the producer succeeds."""
    dag = bag.get_dag("assets_streamed")
    assert [o.name for o in dag.task_dict["dbt_producer"].outlets] == ["dbt/assets_streamed/dbt_producer"]
    assert [t for t, task in dag.task_dict.items() if task.outlets] == ["dbt_producer", FAILED]
    dr = dag.test()
    assert dr.state == "success"
    events = _events(dr)
    assert set(events) == {"seed.gen.raw_events", "model.gen.stg_a", "model.gen.stg_b", "model.gen.int_x",
                           "model.gen.mart_1"}
    assert {e["task_id"] for es in events.values() for e in es} == {"dbt_producer"}
    assert all(len(es) == 1 for es in events.values())
    _assert_extras(events["model.gen.int_x"][0], dr)


def test_a_retry_that_succeeds_emits_what_the_failed_try_built_too(bag: Any) -> None:
    """Try 1 builds raw_events and stg_b, then flaky fails (Airflow registers nothing); try 2 runs
    `dbt retry` (flaky alone) and emits all three, each with the invocation that built it."""
    Path(FLAKY_CSV).unlink(missing_ok=True)
    dr = bag.get_dag("assets_single_flaky").test()
    assert dr.state == "success" and dr.get_task_instance("dbt_build").try_number == 2
    events = _events(dr)
    assert set(events) == {"seed.gen.raw_events", "model.gen.stg_b", "model.gen.flaky"}
    assert {e["task_id"] for es in events.values() for e in es} == {"dbt_build"}, events  # once, from try 2
    assert dr.get_task_instance(FAILED).state == "skipped"  # try 1's kept nodes went with try 2
    first, second = events["model.gen.stg_b"][0], events["model.gen.flaky"][0]
    assert first["dbt_invocation_id"] != second["dbt_invocation_id"]  # try 1's build, try 2's retry
    for event in (first, second):
        _assert_extras(event, dr)


def test_layers_emit_for_the_layers_that_built_and_the_teardown_for_the_failed_one(bag: Any) -> None:
    dag = bag.get_dag("assets_layers_boom")
    assert [i.uri for i in dag.task_dict["staging"].inlets] == [_duck_uri("ext_events")]
    dr = dag.test()
    assert dr.state == "failed"
    events = _events(dr)
    by_task = {uid: [e["task_id"] for e in es] for uid, es in events.items()}
    # the layers that succeeded emitted their own; the failed one's built nodes came from the teardown
    assert by_task == {"seed.gen.raw_events": ["seeds"], "model.gen.stg_a": ["staging"],
                       "model.gen.stg_b": ["staging"], "model.gen.stg_events": ["staging"],
                       "model.gen.int_x": [FAILED], "model.gen.mart_1": [FAILED], "model.gen.mart_2": [FAILED],
                       "model.gen.flaky": [FAILED]}, by_task
    assert dr.get_task_instance("marts").state == "failed"
    # after the one last layer (it ends once the others did): the scheduler's skip when it did not fail
    assert dag.task_dict[FAILED].upstream_task_ids == {"marts"} and dag.task_dict[FAILED].trigger_rule == "one_failed"
    for uid in ("model.gen.stg_a", "model.gen.mart_1"):
        _assert_extras(events[uid][0], dr)


def test_standalone_operator_emits_through_an_alias_named_after_it_and_can_opt_out(bag: Any) -> None:
    dag = bag.get_dag("assets_operator")
    on, off, ls = (dag.task_dict[t] for t in ("seed_on", "seed_off", "ls"))
    assert [o.name for o in on.outlets] == [f"dbt/{dag.dag_id}/seed_on"]
    assert off.outlets == [] and ls.outlets == []
    dr = dag.test()
    assert dr.state == "success"
    events = _events(dr)
    assert sorted(e["task_id"] for e in events["seed.gen.raw_events"]) == ["seed_detached", "seed_on"]
    for event in events["seed.gen.raw_events"]:
        _assert_extras(event, dr)


def test_project_asset_is_the_asset_its_tasks_emit(bag: Any) -> None:
    from dlh_airflow_common.rendering import DbtProject

    project = DbtProject(project_dir=str(PROJECT), conn_id="render_duck", vars={"boom": True})
    assert bag.get_dag("assets_nodes_boom").task_dict["model.mart_1"].outlets == [project.asset("mart_1")]
    assert project.asset("mart_1").uri == _duck_uri("mart_1")
    assert project.asset("model.gen.mart_1") == project.asset("mart_1")
    with pytest.raises(DbtAssetUriException, match="no model, seed or snapshot called 'nope'"):
        project.asset("nope")


def test_a_render_declares_no_assets_when_told_or_when_the_target_cannot_name_them(
        bag: Any, caplog: pytest.LogCaptureFixture) -> None:
    from dlh_airflow_common.rendering import DbtProject, dbt_dag
    from dlh_airflow_common.rendering.assets import NodeAssets
    from dlh_airflow_common.rendering.loader import load_graph

    # the graph of assets_nodes_boom is cached: the renders below start no dbt
    assert bag.get_dag("assets_nodes_boom").task_dict["model.mart_1"].outlets  # declared when nothing stops it
    off = dbt_dag("assets_off", DbtProject(project_dir=str(PROJECT), conn_id="render_duck", vars={"boom": True},
                                           operator_args={"emit_assets": False}), schedule=None)
    assert not any(t.outlets or t.inlets for t in off.tasks)
    for shape in ("single", "nodes"):  # with no alias to emit through, no failed-builds teardown either
        quiet = dbt_dag(f"assets_off_{shape}", DbtProject(
            project_dir=str(PROJECT), conn_id="render_duck", shape=shape, execution="streamed" if shape ==
            "nodes" else "isolated", operator_args={"emit_assets": False}), schedule=None)
        loud = dbt_dag(f"assets_on_{shape}", DbtProject(
            project_dir=str(PROJECT), conn_id="render_duck", shape=shape, execution="streamed" if shape ==
            "nodes" else "isolated"), schedule=None)
        assert FAILED in loud.task_dict and FAILED not in quiet.task_dict, (shape, quiet.task_ids)
    graph = load_graph(DbtProject(project_dir=str(PROJECT), conn_id="render_duck", vars={"boom": True}).source())
    missing = DbtProject(project_dir=str(PROJECT), conn_id="no_such_conn")
    assert NodeAssets.for_render(missing, graph.graph).namespace is None  # a warning, not a failed parse
    assert "declare no assets" in caplog.text and "no_such_conn" in caplog.text


def test_postgres_events_use_the_providers_uri_and_carry_no_secret(pg: PgServer, bag: Any) -> None:
    pytest.importorskip("airflow.providers.postgres", reason="the postgres provider is in the dev group only")
    from airflow.providers.postgres.assets.postgres import sanitize_uri

    os.environ["AIRFLOW_CONN_ASSETS_PG"] = json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "dbt_user",
         "password": CANARY, "schema": "warehouse", "extra": {"schema": "assets"}})
    dr = bag.get_dag("assets_pg").test()
    assert dr.state == "success"
    events = _events(dr)
    assert set(events) == {"seed.gen.raw_events", "model.gen.stg_a", "model.gen.stg_b", "model.gen.int_x",
                           "model.gen.mart_1"}
    uri = events["model.gen.mart_1"][0]["uri"]
    assert uri == f"postgres://127.0.0.1:{pg.port}/warehouse/assets/mart_1"
    assert urlunsplit(sanitize_uri(urlsplit(uri))) == uri
    assert events["seed.gen.raw_events"][0]["rows_affected"] == 3
    assert CANARY not in json.dumps(events)


def test_the_failed_builds_teardown_needs_its_dag_for_the_aliases_it_emits_through() -> None:
    from airflow.sdk import DAG

    from dlh_airflow_common.operators.failed_builds import DbtFailedBuildAssetsOperator

    with pytest.raises(ValueError, match="create DbtFailedBuildAssetsOperator inside its DAG"):
        DbtFailedBuildAssetsOperator(task_id="emit", dbt_task_ids=["build"])
    with DAG("own_teardown", schedule=None):
        own = DbtFailedBuildAssetsOperator(task_id="emit", dbt_task_ids=["build_a", "build_b"]).as_teardown()
    assert [a.name for a in own.outlets] == ["dbt/own_teardown/build_a", "dbt/own_teardown/build_b"]
