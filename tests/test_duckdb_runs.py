"""Real dbt runs on DuckDB through DbtHook and the core: results, errors, concurrency, partial parsing."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from dbt.version import __version__ as DBT_VERSION

from dlh_airflow_common.core import (
    DbtCompilationException,
    DbtProfileException,
    DbtRuntimeException,
    DbtTestFailure,
)
from dlh_airflow_common.hooks.dbt import DbtHook
from tests.conftest import add_model


@pytest.fixture
def duck_conn_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {"conn_type": "duckdb", "host": str(tmp_path / "wh.duckdb"), "extra": {"threads": 4}}
    monkeypatch.setenv("AIRFLOW_CONN_DUCK_WH", json.dumps(conn))
    return "duck_wh"


def _hook(project: Path, conn_id: str, root: Path, **kw: object) -> DbtHook:
    return DbtHook(project, conn_id=conn_id, runtime_root=str(root), **kw)  # type: ignore[arg-type]


def test_build_reports_progress_summary_and_warns(demo_project: Path, duck_conn_id: str,
                                                  runtime_root: Path) -> None:
    lines: list[str] = []
    hook = _hook(demo_project, duck_conn_id, runtime_root, progress=lines.append)
    hook.run_dbt_task("deps")
    result = hook.run_dbt_task("build")
    assert result.success and result.return_code == 0
    assert result.summary.counts == {"success": 5, "pass": 4, "warn": 1}
    assert result.summary.failures == []
    assert [w["unique_id"].split(".")[2] for w in result.summary.warnings] == [
        "accepted_values_stg_orders_status__completed__shipped__placed"]
    assert len(result.summary.slowest) == 5
    assert "dbt summary: 10 nodes" in "\n".join(lines)  # the summary goes to the same sink
    assert f"Running with dbt={DBT_VERSION}" in lines  # which dbt ran, first thing in the task log
    lines = [ln for ln in lines if ln.startswith("[")]
    assert len(lines) == 10
    assert all(re.fullmatch(r"\[\d+/10\] (OK|PASS|WARN) (model|seed|test)\.demo\.\S+ \d+\.\ds", ln)
               for ln in lines), lines
    assert result.target_dir is None  # removed after the run
    assert list((runtime_root / "runs").iterdir()) == []


def test_failing_model_is_a_runtime_error_with_the_node(demo_project: Path, duck_conn_id: str,
                                                       runtime_root: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    add_model(demo_project, "broken", "select * from table_that_does_not_exist")
    hook = _hook(demo_project, duck_conn_id, runtime_root, retry_limit=2, retry_delay=0.1)
    hook.run_dbt_task("deps")
    with caplog.at_level(logging.WARNING), pytest.raises(DbtRuntimeException) as err:
        hook.run_dbt_task("build", select=["broken", "+stg_customers"])
    exc = err.value
    # the hook raises the core class as its Airflow-flavoured subclass of the same name
    assert isinstance(exc, DbtRuntimeException) and type(exc).__name__ == "DbtRuntimeException"
    assert exc.return_code == 1
    assert [n["unique_id"] for n in exc.failed_nodes] == ["model.demo.broken"]
    assert "table_that_does_not_exist" in exc.failed_nodes[0]["message"]
    assert "dbt build --select broken +stg_customers" in str(exc)
    assert "ERROR" in exc.output_tail
    assert exc.summary.counts == {"error": 1, "success": 2, "pass": 2}
    assert "Transient" not in caplog.text  # never retried


def test_compilation_error_is_classified_and_not_retried(demo_project: Path, duck_conn_id: str,
                                                         runtime_root: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    add_model(demo_project, "bad_ref", "select * from {{ ref('no_such_model') }}")
    hook = _hook(demo_project, duck_conn_id, runtime_root, retry_limit=3, retry_delay=0.1)
    hook.run_dbt_task("deps")
    with caplog.at_level(logging.WARNING), pytest.raises(DbtCompilationException) as err:
        hook.run_dbt_task("build")
    assert err.value.return_code == 2
    assert "no_such_model" in str(err.value)
    assert "Transient" not in caplog.text


def test_error_severity_test_failure(demo_project: Path, duck_conn_id: str, runtime_root: Path) -> None:
    (demo_project / "tests" / "assert_no_customers.sql").write_text(
        "select * from {{ ref('stg_customers') }}")
    hook = _hook(demo_project, duck_conn_id, runtime_root)
    hook.run_dbt_task("deps")
    with pytest.raises(DbtTestFailure) as err:
        hook.run_dbt_task("build", select="+assert_no_customers")
    assert [n["unique_id"] for n in err.value.failed_nodes] == ["test.demo.assert_no_customers"]
    assert err.value.failed_nodes[0]["status"] == "fail"


def test_in_process_runner_streams_events(demo_project: Path, duck_conn_id: str, runtime_root: Path) -> None:
    lines: list[str] = []
    hook = _hook(demo_project, duck_conn_id, runtime_root, in_process=True, progress=lines.append)
    hook.run_dbt_task("deps")
    result = hook.run_dbt_task("seed")
    assert result.success and result.summary.counts == {"success": 2}
    assert any(ln.startswith("Running with dbt=") for ln in lines)
    nodes = [ln for ln in lines if ln.startswith("[")]
    assert sorted(ln.split()[2] for ln in nodes) == ["seed.demo.raw_customers", "seed.demo.raw_orders"]


def test_missing_connection_is_a_profile_error(demo_project: Path, runtime_root: Path) -> None:
    hook = _hook(demo_project, "not_defined_anywhere", runtime_root)
    with pytest.raises(DbtProfileException, match="'not_defined_anywhere' is not defined.*AIRFLOW_CONN_"):
        hook.run_dbt_task("build")


def test_user_profiles_dir_still_works(demo_project: Path, tmp_path: Path, runtime_root: Path) -> None:
    prof = tmp_path / "myprofiles"
    prof.mkdir()
    (prof / "profiles.yml").write_text(
        f"demo:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp_path / 'own.duckdb'}\n      threads: 1\n")
    hook = DbtHook(demo_project, profiles_dir=str(prof), target="dev", runtime_root=str(runtime_root))
    hook.run_dbt_task("deps")
    assert hook.run_dbt_task("seed").success
    with pytest.raises(DbtProfileException, match="has no profiles.yml"):
        DbtHook(demo_project, profiles_dir=str(tmp_path), runtime_root=str(runtime_root)).run_dbt_task("seed")


def test_kept_artifacts_are_readable_through_the_hook(demo_project: Path, duck_conn_id: str,
                                                      runtime_root: Path) -> None:
    hook = _hook(demo_project, duck_conn_id, runtime_root, keep_target_artifacts=True)
    hook.run_dbt_task("deps")
    hook.run_dbt_task("build")
    hook.run_dbt_task("docs generate")
    assert "model.demo.customer_orders" in hook.get_manifest()["nodes"]
    assert "model.demo.customer_orders" in hook.get_catalog()["nodes"]
    hook.run_dbt_task("source freshness")
    assert [r["unique_id"] for r in hook.get_sources()["results"]] == ["source.demo.shop.raw_orders"]
    assert hook.last_result is not None and hook.last_result.summary.counts == {"pass": 1}


def test_debug_log_file_is_written_only_when_someone_can_read_it(demo_project: Path, duck_conn_id: str,
                                                               runtime_root: Path) -> None:
    """dbt.log dies with the run dir unless kept: writing it would only cost time."""
    seen: dict[str, str] = {}

    def peek(label: str) -> Callable[[Path, object], None]:
        def callback(target: Path, _result: object) -> None:
            log_file = target.parent / "logs" / "dbt.log"
            seen[label] = log_file.read_text() if log_file.exists() else ""
        return callback

    _hook(demo_project, duck_conn_id, runtime_root, artifacts_callback=peek("default")).run_dbt_task("deps")
    _hook(demo_project, duck_conn_id, runtime_root, artifacts_callback=peek("default")).run_dbt_task("parse")
    _hook(demo_project, duck_conn_id, runtime_root, artifacts_callback=peek("asked"),
          env_vars={"DBT_LOG_LEVEL_FILE": "debug"}).run_dbt_task("parse")
    kept = _hook(demo_project, duck_conn_id, runtime_root, keep_target_artifacts=True)
    result = kept.run_dbt_task("parse")
    assert result.target_dir is not None
    debug_line = "running dbt with arguments"  # a debug-level event of every dbt command
    assert seen["default"] == ""
    assert debug_line in seen["asked"]
    assert debug_line in (result.target_dir.parent / "logs" / "dbt.log").read_text()


def test_schema_override_routes_models_without_touching_the_project(demo_project: Path, tmp_path: Path,
                                                                    duck_conn_id: str,
                                                                    runtime_root: Path) -> None:
    import duckdb

    before = (demo_project / "dbt_project.yml").read_text()
    hook = _hook(demo_project, duck_conn_id, runtime_root, schema_override="ci_override")
    hook.run_dbt_task("deps")
    hook.run_dbt_task("build")
    prof = tmp_path / "own"
    prof.mkdir()
    (prof / "profiles.yml").write_text(
        f"demo:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp_path / 'own.duckdb'}\n      schema: main\n")
    own = DbtHook(demo_project, profiles_dir=str(prof), runtime_root=str(runtime_root),
                  schema_override="user_override")
    own.run_dbt_task("seed")
    assert (demo_project / "dbt_project.yml").read_text() == before
    assert "user_override" not in (prof / "profiles.yml").read_text()
    for path, schema in ((tmp_path / "wh.duckdb", "ci_override"), (tmp_path / "own.duckdb", "user_override")):
        con = duckdb.connect(str(path), read_only=True)
        try:
            rows = con.sql("select distinct table_schema from information_schema.tables").fetchall()
        finally:
            con.close()
        assert rows == [(schema,)], (path, rows)


def test_package_imports_without_optional_extras() -> None:
    """Only dbt-core, tenacity, PyYAML and Airflow are needed to import every module."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'openlineage' or name.startswith('dbt.adapters.postgres')"
        " or name.startswith('dbt.adapters.duckdb'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dlh_airflow_common.core, dlh_airflow_common.hooks.dbt, dlh_airflow_common.operators.dbt\n"
        "import dlh_airflow_common.triggers.dbt, dlh_airflow_common.lineage, dlh_airflow_common.links\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
