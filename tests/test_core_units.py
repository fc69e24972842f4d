"""Runtime layout, profiles, classification and artifacts, on real files (no dbt process)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCompilationException,
    DbtConnectionException,
    DbtProfileException,
    DbtProjectException,
    DbtRuntime,
    DbtRuntimeException,
    RunIdentity,
    load_artifact,
    project_dir_from_dag_file,
    summarize,
)
from dlh_airflow_common.core.classify import Evidence, classify
from dlh_airflow_common.core.profiles import ADAPTERS, ProfilesDir, render_profile


# -- runtime -------------------------------------------------------------------------------------
def test_run_names_follow_the_pattern_and_never_collide() -> None:
    ident = RunIdentity("daily.etl", "group.dbt_run", 2)
    now = datetime(2026, 1, 19, 14, 30, 52)
    names = {ident.run_name(now) for _ in range(200)}
    assert len(names) == 200
    assert all(re.fullmatch(r"run_20260119_143052_daily_etl_group_dbt_run_try2_[0-9a-f]{6}", n) for n in names)
    assert re.fullmatch(r"run_20260119_143052_[0-9a-f]{6}", RunIdentity().run_name(now))


def test_run_dirs_retry_state_and_task_ids_sanitise_names_the_same_way() -> None:
    """One rule in core: a run id like ``manual__2026-01-01T00:00:00+00:00`` maps the same everywhere."""
    from types import SimpleNamespace

    from dlh_airflow_common.core.names import id_dir, safe_name
    from dlh_airflow_common.core.stream import stream_dir
    from dlh_airflow_common.operators.retry_state import RetryState
    from dlh_airflow_common.rendering import graph

    weird = "a b:+c..d/é"
    assert safe_name(weird) == "a_b__c__d__"
    assert safe_name(weird, keep=".") == "a_b__c..d__"
    ident = RunIdentity(weird, weird, 1).run_name(datetime(2026, 1, 1))
    assert ident.startswith(f"run_20260101_000000_{safe_name(weird)}_{safe_name(weird)}_try1_")
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id=weird, try_number=1)
    assert RetryState.for_task(Path("/r"), ti).path.name == id_dir(weird)
    assert id_dir(weird).startswith(safe_name(weird) + "-")
    assert graph._task_id(weird) == safe_name(weird, keep=".")
    assert stream_dir(Path("/r"), weird, weird) == Path("/r/streams") / id_dir(weird) / id_dir(weird)


def test_runtime_shadows_project_and_cleans_up(demo_project: Path, runtime_root: Path) -> None:
    rt = DbtRuntime.create(demo_project, runtime_root=runtime_root, identity=RunIdentity("d", "t", 1))
    assert rt.run_dir.parent == runtime_root / "runs"
    assert rt.run_dir.name.startswith("run_") and "_d_t_try1_" in rt.run_dir.name
    assert (rt.shadow_dir / "models").resolve() == demo_project / "models"
    assert not (rt.shadow_dir / "target").exists()
    # `local: ../demo_pkg` must resolve from the shadow as from the project (dbt joins paths lexically).
    assert Path(os.path.normpath(rt.shadow_dir / ".." / "demo_pkg" / "dbt_project.yml")).is_file()
    assert rt.target_dir.is_dir() and rt.log_dir.is_dir()
    rt.cleanup()
    assert not rt.run_dir.exists()


def test_keep_target_artifacts_keeps_only_target_and_logs(demo_project: Path, runtime_root: Path) -> None:
    rt = DbtRuntime.create(demo_project, runtime_root=runtime_root, keep_target_artifacts=True,
                           for_deps=True)
    (rt.target_dir / "run_results.json").write_text("{}")
    rt.cleanup()
    assert sorted(p.name for p in rt.run_dir.iterdir()) == ["logs", "target"]
    assert (rt.target_dir / "run_results.json").is_file()


def test_shared_shadow_is_stable_and_follows_project_changes(demo_project: Path, runtime_root: Path) -> None:
    a = DbtRuntime.create(demo_project, runtime_root=runtime_root)
    b = DbtRuntime.create(demo_project, runtime_root=runtime_root)
    assert a.shadow_dir == b.shadow_dir  # a stable path keeps partial parsing valid across runs
    (demo_project / "analyses").mkdir()
    c = DbtRuntime.create(demo_project, runtime_root=runtime_root)
    assert c.shadow_dir == a.shadow_dir and (c.shadow_dir / "analyses").is_dir()


def test_missing_project_dir_is_a_specific_error(tmp_path: Path) -> None:
    with pytest.raises(DbtProjectException, match="does not exist"):
        DbtRuntime.create(tmp_path / "nope", runtime_root=tmp_path)
    with pytest.raises(DbtProjectException, match="no dbt_project.yml"):
        DbtRuntime.create(tmp_path, runtime_root=tmp_path)


def test_project_dir_from_dag_file(demo_project: Path) -> None:
    dag_file = demo_project.parent / "dags" / "my_dag.py"
    dag_file.parent.mkdir()
    dag_file.write_text("# an airflow dag file\n")
    assert project_dir_from_dag_file(dag_file, "..", "demo_project") == demo_project
    with pytest.raises(DbtProjectException):
        project_dir_from_dag_file(dag_file, "missing")


# -- profiles ------------------------------------------------------------------------------------
def test_postgres_profile_keeps_password_out_of_the_document() -> None:
    conn = ConnectionInfo("pg", "postgres", host="db", port=5433, login="u", password="s3cret-pw",
                          schema="warehouse", extra={"schema": "analytics", "threads": "8"})
    prof = render_profile(conn, profile_name="demo", target_name="prod")
    out = prof.document["demo"]["outputs"]["prod"]
    assert out == {"type": "postgres", "host": "db", "user": "u", "port": 5433, "dbname": "warehouse",
                   "schema": "analytics", "threads": 8,
                   "password": "{{ env_var('DBT_ENV_SECRET_PASSWORD') }}"}
    assert prof.env == {"DBT_ENV_SECRET_PASSWORD": "s3cret-pw"}
    assert "s3cret-pw" not in yaml.safe_dump(prof.document)


def test_profile_document_is_stable_across_secret_values() -> None:
    def doc(pw: str) -> object:
        conn = ConnectionInfo("pg", "postgres", host="db", login="u", password=pw, schema="w")
        return render_profile(conn, profile_name="p", target_name="t").document

    assert doc("one") == doc("two")


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        (ConnectionInfo("s", "snowflake", login="u", password="pw", schema="s",
                        extra={"account": "acc", "database": "db", "warehouse": "wh", "role": "r"}),
         {"type": "snowflake", "account": "acc", "role": "r"}),
        (ConnectionInfo("b", "google_cloud_platform", schema="ds",
                        extra={"project": "p", "keyfile_dict": {"type": "service_account"}}),
         {"type": "bigquery", "method": "service-account-json", "dataset": "ds",
          "keyfile_json": {"type": "{{ env_var('DBT_ENV_SECRET_KEYFILE_JSON_TYPE') }}"}}),
        (ConnectionInfo("r", "redshift", host="h", login="u", password="pw", schema="dev"),
         {"type": "redshift", "port": 5439, "dbname": "dev"}),
        (ConnectionInfo("t", "trino", host="h", login="u", password="pw", schema="s",
                        extra={"catalog": "hive"}),
         {"type": "trino", "method": "ldap", "database": "hive", "port": 8080}),
        (ConnectionInfo("d", "dremio", host="h", login="u", password="pw"),
         {"type": "dremio", "software_host": "h", "port": 9047}),
        (ConnectionInfo("x", "databricks", host="h", password="tok", schema="s",
                        extra={"http_path": "/sql/1"}),
         {"type": "databricks", "token": "{{ env_var('DBT_ENV_SECRET_TOKEN') }}"}),
        (ConnectionInfo("k", "duckdb", host="/tmp/x.duckdb"), {"type": "duckdb", "schema": "main"}),
    ],
)
def test_every_adapter_maps(conn: ConnectionInfo, expected: dict[str, object]) -> None:
    out = render_profile(conn, profile_name="p", target_name="t").document["p"]["outputs"]["t"]
    assert expected.items() <= out.items()
    for value in out.values():
        assert str(value) not in {"pw", "tok"}, "a secret value leaked into the profile document"


def test_all_documented_adapters_exist() -> None:
    assert set(ADAPTERS) == {"postgres", "duckdb", "snowflake", "bigquery", "redshift", "trino", "dremio",
                             "databricks"}


def test_unknown_type_and_missing_field_are_specific() -> None:
    with pytest.raises(DbtProfileException, match="type 'http'.*dbt_adapter"):
        render_profile(ConnectionInfo("h", "http"), profile_name="p", target_name="t")
    with pytest.raises(DbtProfileException, match=r"'pg'.*missing 'host'.*connection's host"):
        render_profile(ConnectionInfo("pg", "postgres", login="u", schema="w"), profile_name="p",
                       target_name="t")
    with pytest.raises(DbtProfileException, match="'warehouse'.*extra field 'warehouse'"):
        render_profile(ConnectionInfo("s", "snowflake", login="u", schema="s", extra={"account": "a",
                       "database": "d"}), profile_name="p", target_name="t")


def test_schema_override_uses_the_adapters_schema_key() -> None:
    conn = ConnectionInfo("b", "bigquery", schema="ds", extra={"project": "p"})
    out = render_profile(conn, profile_name="p", target_name="t", schema_override="ci_42")
    assert out.document["p"]["outputs"]["t"]["dataset"] == "ci_42"


def test_profiles_dir_is_private_and_removed(tmp_path: Path) -> None:
    prof = render_profile(ConnectionInfo("k", "duckdb", host="x.duckdb"), profile_name="p", target_name="t")
    with ProfilesDir(prof, parent=tmp_path) as holder:
        assert stat.S_IMODE(holder.path.stat().st_mode) == 0o700
        assert stat.S_IMODE((holder.path / "profiles.yml").stat().st_mode) == 0o600
    assert not holder.path.exists()


# -- classification ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ('connection to server at "127.0.0.1", port 5 failed: Connection refused', DbtConnectionException),
        ("could not connect to server: No route to host", DbtConnectionException),
        ("server closed the connection unexpectedly", DbtConnectionException),
        ("HTTP 503 Service Unavailable", DbtRuntimeException),  # an API's words, not a lost connection
        ("Compilation Error in model x\n  'foo' is undefined", DbtCompilationException),
        ("Parsing Error\n  Invalid models config", DbtCompilationException),
        ("Runtime Error\n  Could not find profile named 'demo'", DbtProfileException),
        ('Database Error in model x\n  syntax error at or near "selec"', DbtRuntimeException),
    ],
)
def test_classifier_on_a_foreign_clis_text(message: str, cls: type) -> None:
    assert classify(Evidence(messages=[message])) is cls
    assert cls(message).retryable is (cls is DbtConnectionException)


# -- artifacts -----------------------------------------------------------------------------------
def test_missing_and_corrupt_artifacts_warn_and_return_empty(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "manifest.json").write_text('{"nodes": {')
    with caplog.at_level(logging.WARNING):
        assert load_artifact(tmp_path / "manifest.json") == {}
        assert load_artifact(tmp_path / "catalog.json") == {}
    text = caplog.text
    assert "manifest.json is unreadable or corrupt" in text and "catalog.json not found" in text


def test_summary_counts_warn_as_warning_not_failure() -> None:
    results = {"elapsed_time": 12.5, "results": [
        {"unique_id": f"model.p.m{i}", "status": "success", "execution_time": float(i)} for i in range(7)
    ] + [
        {"unique_id": "test.p.t1", "status": "warn", "execution_time": 0.1, "message": "Got 3 results"},
        {"unique_id": "test.p.t2", "status": "fail", "execution_time": 0.2, "message": "Got 1 result"},
        {"unique_id": "model.p.bad", "status": "error", "execution_time": 0.3, "message": "syntax error"},
    ]}
    s = summarize(results)
    assert s.counts == {"success": 7, "warn": 1, "fail": 1, "error": 1}
    assert [f["unique_id"] for f in s.failures] == ["test.p.t2", "model.p.bad"]
    assert [w["unique_id"] for w in s.warnings] == ["test.p.t1"]
    assert [r["unique_id"] for r in s.slowest] == [f"model.p.m{i}" for i in (6, 5, 4, 3, 2)]
    assert s.elapsed == 12.5
    assert json.loads(json.dumps(s.to_dict()))["counts"]["warn"] == 1


def test_one_profile_path_splits_secrets_in_one_place(demo_project: Path) -> None:
    """Every mode renders through resolve_profile; the secret prefix is spelled in one module only."""
    from dlh_airflow_common.core.profile_setup import ProfileConfig, plain_env, resolve_profile

    conn = ConnectionInfo("pg", "postgres", host="h", login="u", password="s3cret-pw", schema="db")
    env_vars = {"DBT_ENV_SECRET_TOKEN": "tok-123", "PLAIN": "1"}
    setup = resolve_profile(ProfileConfig(connection=conn, schema_override="other"), demo_project, env_vars)
    assert setup.profile_name == "demo" and setup.target_name == "airflow"  # from dbt_project.yml
    assert setup.secret_env == {"DBT_ENV_SECRET_PASSWORD": "s3cret-pw", "DBT_ENV_SECRET_TOKEN": "tok-123"}
    assert setup.output(demo_project)["schema"] == "other"
    assert "s3cret-pw" not in json.dumps(setup.rendered.document if setup.rendered else None)
    assert plain_env(env_vars) == {"PLAIN": "1"}
    src = Path(__file__).resolve().parent.parent / "src" / "dlh_airflow_common"
    literal = re.compile(r"""["']DBT_ENV_SECRET_""")  # in code; prose may name the prefix
    spelled = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if literal.search(p.read_text()))
    assert spelled == ["core/profiles.py"], spelled
    with pytest.raises(DbtProfileException, match="pass conn_id"):
        resolve_profile(ProfileConfig(), demo_project)


def test_install_path_outside_the_project_is_a_specific_error(demo_project: Path, runtime_root: Path) -> None:
    yml = demo_project / "dbt_project.yml"
    yml.write_text(yml.read_text() + "packages-install-path: ../shared_packages\n")
    with pytest.raises(DbtProjectException, match="packages-install-path '../shared_packages'.*inside the"):
        DbtRuntime.create(demo_project, runtime_root=runtime_root, for_deps=True)


def test_a_local_packages_own_local_packages_resolve_from_the_deps_shadow(tmp_path: Path,
                                                                            runtime_root: Path) -> None:
    # dbt joins every local path, a package's own ones too, to the root project dir, lexically.
    for name, yml in (("helper", ""), ("pkg", "packages:\n  - local: ../../helper\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dbt_project.yml").write_text(f"name: {name}\n")
        (tmp_path / name / "packages.yml").write_text(yml)
    project = tmp_path / "pkg" / "integration_tests"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: it\nprofile: p\n")
    (project / "packages.yml").write_text("packages:\n  - local: ../\n")
    rt = DbtRuntime.create(project, runtime_root=runtime_root, for_deps=True)
    for local, real in (("..", tmp_path / "pkg"), ("../../helper", tmp_path / "helper")):
        seen = Path(os.path.normpath(rt.shadow_dir / local / "dbt_project.yml"))
        assert seen.read_text() == (real / "dbt_project.yml").read_text()
    rt.cleanup()
