"""Rendering a dbt project into Airflow tasks: three shapes, real dbt, real Airflow (dag.test())."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

DAG_FILE = REPO / "tests" / "dags" / "rendered_dbt_dags.py"
PROJECT = Path(os.environ["DLH_RENDER_PROJECT_DIR"])
RUNTIME = Path(os.environ["DLH_DBT_RUNTIME_ROOT"])
MODEL_EDGES = {
    ("seed.raw_events", "model.stg_a"),
    ("seed.raw_events", "model.stg_b"),
    ("model.stg_a", "model.int_x"), ("model.stg_b", "model.int_x"),  # through the ephemeral int_eph
    ("model.int_x", "model.mart_1"), ("model.stg_b", "model.mart_2"), ("model.stg_b", "model.boom"),
    ("model.boom", "model.boom_child"), ("model.stg_b", "model.flaky"),
}
RELATIONSHIPS = "test.relationships_mart_2_id__id__ref_stg_a_"  # parents on separate branches: own task
ATTACHED = "relationships_mart_1_id__id__ref_stg_a_"  # stg_a is upstream of mart_1: runs in mart_1's task


@pytest.fixture(scope="module")
def bag(airflow_db: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(str(DAG_FILE))
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def test_nodes_shape_has_a_task_per_node_with_the_manifests_edges(bag: Any) -> None:
    dag = bag.get_dag("render_nodes")
    ids = set(dag.task_dict)
    assert ids == {"seed.raw_events", "source.raw.ext_events", RELATIONSHIPS,
                   *(f"model.{n}" for n in ("stg_events", "stg_a", "stg_b", "int_x", "mart_1", "mart_2",
                                            "boom", "boom_child", "flaky"))}
    assert "model.int_eph" not in ids and "model.disabled_model" not in ids  # folded / vanished
    assert _edges(dag) == MODEL_EDGES | {
        ("source.raw.ext_events", "model.stg_events"),  # freshness before the source's reader
        ("model.mart_2", RELATIONSHIPS), ("model.stg_a", RELATIONSHIPS),  # after its last parent
    }
    mart = dag.task_dict["model.mart_2"]
    assert mart.select == ["fqn:gen.marts.mart_2"] and mart.command == "build"
    assert mart.extra_args == ["--indirect-selection", "buildable"]
    assert "`model.gen.mart_2`" in mart.doc_md and "models/marts/mart_2.sql" in mart.doc_md
    assert "materialization: `table`" in mart.doc_md and "not_null_mart_2_id" in mart.doc_md
    assert ATTACHED not in mart.doc_md and ATTACHED in dag.task_dict["model.mart_1"].doc_md
    assert not any(ATTACHED in t for t in ids)  # attached, not a task of its own
    assert dag.task_dict[RELATIONSHIPS].command == "test"
    assert dag.task_dict["source.raw.ext_events"].command == "source freshness"
    assert dag.max_active_tasks == 1 and "DuckDB" in mart.doc_md


def test_nodes_dag_run_builds_every_node_and_its_tests(bag: Any) -> None:
    dr = bag.get_dag("render_nodes").test()
    assert dr.state == "success", _states(dr)
    runs = sorted(RUNTIME.glob("runs/run_*_render_nodes_model_mart_2_try1_*"))
    ran = {r["unique_id"] for r in json.loads((runs[-1] / "target" / "run_results.json").read_text())["results"]}
    # the node and its one-parent test; the relationships test waits for its other parent
    assert ran == {"model.gen.mart_2", next(u for u in ran if u.startswith("test.gen.not_null_mart_2_id"))}
    runs = sorted(RUNTIME.glob("runs/run_*_render_nodes_model_mart_1_try1_*"))
    ran = {r["unique_id"] for r in json.loads((runs[-1] / "target" / "run_results.json").read_text())["results"]}
    # stg_a is upstream of mart_1: dbt's buildable rule runs that relationships test in mart_1's task
    assert {u.split(".")[-2] if u.startswith("test.") else u for u in ran} == {
        "model.gen.mart_1", "not_null_mart_1_id", ATTACHED}


def test_a_failing_attached_relationships_test_fails_its_last_parents_task(bag: Any) -> None:
    dag = bag.get_dag("render_nodes_rel_fail")
    assert set(dag.task_dict) == {"seed.raw_events", "model.stg_a", "model.stg_b", "model.int_x",
                                  "model.mart_1"}
    dr = dag.test()
    states = _states(dr)
    assert dr.state == "failed" and states.pop("model.mart_1") == "failed", states
    assert set(states.values()) == {"success"}, states
    runs = sorted(RUNTIME.glob("runs/run_*_render_nodes_rel_fail_model_mart_1_try1_*"))
    results = json.loads((runs[-1] / "target" / "run_results.json").read_text())["results"]
    status = {r["unique_id"].split(".")[-2] if r["unique_id"].startswith("test.") else r["unique_id"]:
              r["status"] for r in results}
    assert status == {"model.gen.mart_1": "success", "not_null_mart_1_id": "pass", ATTACHED: "fail"}


def test_tests_attached_to_a_node_task_are_the_ones_dbt_builds_with_it(bag: Any) -> None:
    """graph.py mirrors dbt's `buildable` rule; dbt itself lists what each node task's command builds."""
    from dlh_airflow_common.hooks.dbt import DbtHook
    from dlh_airflow_common.rendering import DbtProject
    from dlh_airflow_common.rendering.loader import load_graph

    graph = load_graph(DbtProject(project_dir=str(PROJECT), conn_id="render_duck",
                                  source_freshness=True).source()).graph
    hook = DbtHook(PROJECT, conn_id="render_duck")
    for uid in ("model.gen.mart_1", "model.gen.mart_2", "model.gen.stg_a"):
        node = graph.nodes[uid]
        listed = hook.list_nodes([node.selector], extra_args=["--indirect-selection", "buildable",
                                                              "--resource-type", "test"])
        assert sorted(listed) == sorted(node.tests), uid
    assert any(ATTACHED in t for t in graph.nodes["model.gen.mart_1"].tests)


def test_a_failing_model_fails_its_task_and_its_downstream_ends_upstream_failed(bag: Any) -> None:
    dr = bag.get_dag("render_nodes_boom").test()
    states = _states(dr)
    assert dr.state == "failed"
    assert states["model.boom"] == "failed" and states["model.boom_child"] == "upstream_failed"
    assert states["model.mart_1"] == "success" and states["model.flaky"] == "success"  # siblings build


def test_an_airflow_retry_of_a_node_task_reruns_only_that_node(bag: Any) -> None:
    (PROJECT.parent / "flaky.csv").unlink(missing_ok=True)
    dag = bag.get_dag("render_nodes_flaky")
    assert set(dag.task_dict) == {"seed.raw_events", "model.stg_b", "model.flaky"}
    dr = dag.test()
    assert dr.state == "success", _states(dr)
    flaky = dr.get_task_instance("model.flaky")
    assert flaky.try_number == 2 and dr.get_task_instance("model.stg_b").try_number == 1
    runs = sorted(RUNTIME.glob("runs/run_*_render_nodes_flaky_model_flaky_try2_*"))
    ran = {r["unique_id"] for r in json.loads((runs[-1] / "target" / "run_results.json").read_text())["results"]}
    assert {u for u in ran if not u.startswith("test.")} == {"model.gen.flaky"}  # and its own tests
    assert {u.split(".")[2] for u in ran if u.startswith("test.")} == {"not_null_flaky_id"}


def test_layers_shape_orders_groups_by_the_manifest(bag: Any) -> None:
    dag = bag.get_dag("render_layers")
    assert _edges(dag) == {("seeds", "staging"), ("staging", "intermediate"), ("staging", "marts"),
                           ("intermediate", "marts"),
                           ("marts", "dbt_assets_of_failed_builds")}  # a teardown (see test_assets)
    marts = dag.task_dict["marts"]
    assert "fqn:gen.marts.mart_2" in marts.select and f"fqn:gen.{RELATIONSHIPS[5:]}" in marts.select
    assert "relationships_mart_2_id" in marts.doc_md  # cross-layer test runs with its last parent
    dr = dag.test()
    assert dr.state == "success", _states(dr)


def test_single_shape_is_one_build(bag: Any) -> None:
    dag = bag.get_dag("render_single")
    assert set(dag.task_dict) == {"dbt_build", "dbt_assets_of_failed_builds"}  # a teardown (see test_assets)
    assert dag.task_dict["dbt_build"].command == "build"


def test_task_group_embeds_in_a_bigger_dag(bag: Any) -> None:
    dag = bag.get_dag("render_group_in_dag")
    edges = _edges(dag)
    assert ("extract", "dbt.model.stg_a") in edges and ("dbt.model.mart_1", "publish") in edges
    assert ("dbt.model.stg_a", "dbt.model.int_x") in edges
    assert "dbt.model.stg_b" not in dag.task_dict  # not in stg_a+
    assert ("dbt.model.mart_2", "publish") not in edges  # mart_2 is not downstream of stg_a


def test_rendering_with_a_cached_graph_starts_no_dbt_and_imports_no_dbt(bag: Any) -> None:
    """A fresh interpreter imports the DAG file: the cache answers, dbt stays out of the process."""
    probe = textwrap.dedent(f"""
        import subprocess, sys
        started = []
        real = subprocess.Popen.__init__
        def spy(self, args, *a, **k):
            if "dbt" in str(args):
                started.append(args)
            return real(self, args, *a, **k)
        subprocess.Popen.__init__ = spy
        import importlib.util
        spec = importlib.util.spec_from_file_location("rendered", {str(DAG_FILE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert len(module.nodes_dag.tasks) == 12, len(module.nodes_dag.tasks)
        print("STARTED", started)
        print("DBT", sorted(m for m in sys.modules if m == "dbt" or m.startswith("dbt.")))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "STARTED []" in out.stdout and "DBT []" in out.stdout, out.stdout


def test_render_on_a_read_only_project_mount(tmp_path: Path) -> None:
    """The project on a real read-only bind mount: dbt ls runs in the runtime root, not the project."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = textwrap.dedent(f"""
        from dlh_airflow_common.rendering import DbtProject, GraphSource, load_graph
        loaded = load_graph(GraphSource(project_dir={str(mount / 'gen')!r}, conn_id="render_duck",
                                        runtime_root={str(tmp_path / 'rt')!r}))
        print("NODES", len(loaded.graph.nodes), loaded.from_cache)
    """)
    (tmp_path / "probe.py").write_text(script)
    cmd = (f"mount --bind {PROJECT.parent} {mount} && mount -o remount,bind,ro {mount} && "
           f"{sys.executable} {tmp_path / 'probe.py'}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                         env=os.environ, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "NODES 11 False" in out.stdout, out.stdout
    assert not (PROJECT / "target").exists() and not (PROJECT / "logs").exists()


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_gives_one_clear_error_each(tmp_path: Path) -> None:
    from dlh_airflow_common.core.exceptions import DbtProjectException
    from dlh_airflow_common.rendering import DbtGraphError, DbtProject, dbt_dag

    def render(**kw: Any) -> None:
        dbt_dag("bad", DbtProject(project_dir=str(PROJECT), conn_id="render_duck", **kw), schedule=None)

    with pytest.raises(DbtProjectException, match="manifest_path .*does not exist; build it in CI"):
        render(manifest_path=str(tmp_path / "missing.json"))
    corrupt = tmp_path / "manifest.json"
    corrupt.write_text("{not json")
    with pytest.raises(DbtProjectException, match="not readable JSON"):
        render(manifest_path=str(corrupt))
    with pytest.raises(DbtGraphError, match="The selection matches nothing"):
        render(select=["tag:no_such_tag"])
    with pytest.raises(DbtGraphError, match=r"depend on each other in a cycle: .*model.gen.stg_b"):
        render(shape="layers", layers={"a": "stg_a stg_events resource_type:seed mart_2 boom boom_child flaky",
                                       "b": "stg_b mart_1 int_x"})
    with pytest.raises(DbtGraphError, match=r"more than one layer: model.gen.stg_a in a and b"):
        render(shape="layers", layers={"a": "path:models", "b": "stg_a"})
    with pytest.raises(ValueError, match="operator_args repeats select"):
        DbtProject(project_dir=str(PROJECT), conn_id="x", operator_args={"select": "a"})


# -- import cost guard: direct wiring must equal what Airflow would have wired -----------------------
def _synthetic_manifest(models: int) -> dict[str, Any]:
    import random

    rng = random.Random(7)
    nodes: dict[str, Any] = {}
    for i in range(models):
        parents = [f"model.big.m{p}" for p in rng.sample(range(i), k=min(i, rng.choice((1, 2, 3))))] if i else []
        nodes[f"model.big.m{i}"] = {
            "resource_type": "model", "name": f"m{i}", "package_name": "big", "fqn": ["big", f"m{i}"],
            "original_file_path": f"models/m{i}.sql", "config": {"materialized": "view"},
            "depends_on": {"nodes": parents}}
    return {"metadata": {"project_name": "big", "adapter_type": "postgres"}, "nodes": nodes, "sources": {}}


def test_wiring_2000_nodes_survives_serialization(tmp_path: Path) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    from dlh_airflow_common.rendering import DbtProject, dbt_dag

    manifest = _synthetic_manifest(2000)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    project = tmp_path / "big"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: big\nprofile: big\nconfig-version: 2\n")
    dag = dbt_dag("big", DbtProject(project_dir=str(project), conn_id="unused", manifest_path=str(path),
                                    runtime_root=str(tmp_path / "rt")), schedule=None)
    expected = {(f"model.{p.split('.')[-1]}", f"model.{n['name']}") for n in manifest["nodes"].values()
                for p in n["depends_on"]["nodes"]}
    assert _edges(dag) == expected
    assert {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids} == {(u, d) for u, d in expected}
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert _edges(restored) == expected
    assert restored.task_dict["model.m1999"].upstream_task_ids == dag.task_dict["model.m1999"].upstream_task_ids


def test_a_test_attaches_to_its_last_parent_only_when_its_other_parents_are_upstream() -> None:
    """dbt's `buildable` rule, mirrored: other parents upstream (through unselected or ephemeral nodes)
    or sources -> the last parent's task; parents on separate branches -> a task of its own."""
    from dlh_airflow_common.rendering.graph import build_graph

    def node(kind: str, name: str, *parents: str, materialized: str = "view") -> tuple[str, dict[str, Any]]:
        return f"{kind}.p.{name}", {"resource_type": kind, "name": name, "package_name": "p", "fqn": ["p", name],
                                    "config": {"materialized": materialized},
                                    "depends_on": {"nodes": list(parents)}}

    nodes = dict([
        node("model", "a", "source.p.raw.t"), node("model", "b", "source.p.raw.t"),
        node("model", "eph", "model.p.a", materialized="ephemeral"), node("model", "c", "model.p.eph"),
        node("model", "d", "model.p.c"),
        node("test", "rel_d_a", "model.p.d", "model.p.a"),  # a upstream of d (via c, an ephemeral)
        node("test", "rel_a_d", "model.p.a", "model.p.d"),  # same, parents listed the other way round
        node("test", "rel_b_a", "model.p.b", "model.p.a"),  # separate branches
        node("test", "src_b", "model.p.b", "source.p.raw.t"),  # a source is always buildable
        node("test", "of_source", "source.p.raw.t"),
    ])
    manifest = {"metadata": {"project_name": "p"}, "nodes": nodes,
                "sources": {"source.p.raw.t": {"source_name": "raw", "name": "t"}}}
    everything = build_graph(manifest)
    assert everything.nodes["model.p.d"].tests == ["test.p.rel_d_a", "test.p.rel_a_d"]
    assert everything.nodes["model.p.b"].tests == ["test.p.src_b"]
    assert {n.unique_id for n in everything.of_type("test")} == {"test.p.rel_b_a", "test.p.of_source"}
    assert sorted(everything.nodes["test.p.rel_b_a"].upstream) == ["model.p.a", "model.p.b"]
    # a and c unselected: a is still d's ancestor in dbt's graph, so the test still goes with d
    selected = build_graph(manifest, ["model.p.d", "test.p.rel_d_a"])
    assert list(selected.nodes) == ["model.p.d"] and selected.nodes["model.p.d"].tests == ["test.p.rel_d_a"]


def test_gc_is_paused_only_inside_a_render_and_comes_back_after_errors_and_nesting(tmp_path: Path) -> None:
    import gc

    from dlh_airflow_common.rendering import DbtProject, dbt_dag
    from dlh_airflow_common.rendering.loader import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # a render inside a render (a task group built while another pauses)
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one leaves it to the outer
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a render that fails")
    assert gc.isenabled()

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_synthetic_manifest(50)))
    project = tmp_path / "big"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: big\nprofile: big\nconfig-version: 2\n")
    for _ in range(2):  # a cache miss, then a hit (the cached load pauses too)
        dag = dbt_dag("gc", DbtProject(project_dir=str(project), conn_id="unused", manifest_path=str(path),
                                       runtime_root=str(tmp_path / "rt")), schedule=None)
        assert len(dag.tasks) == 50 and gc.isenabled()
    gc.disable()
    try:  # a caller that had it off keeps it off
        dbt_dag("gc_off", DbtProject(project_dir=str(project), conn_id="unused", manifest_path=str(path),
                                     runtime_root=str(tmp_path / "rt")), schedule=None)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_graph_cache_is_keyed_by_project_content(tmp_path: Path) -> None:
    from dlh_airflow_common.rendering.loader import project_fingerprint

    project = tmp_path / "p"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: p\n")
    (project / "models" / "a.sql").write_text("select 1")
    before = project_fingerprint(project)
    (project / "target").mkdir()
    (project / "target" / "manifest.json").write_text("{}")  # dbt's own output is not content
    assert project_fingerprint(project) == before
    (project / "models" / "a.sql").write_text("select 2")
    assert project_fingerprint(project) != before
