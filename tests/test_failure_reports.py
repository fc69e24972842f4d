"""A failed run is classified from dbt's own types and reads well: real headline, SQL, user paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCommand,
    DbtCompilationException,
    DbtConnectionAuthException,
    DbtConnectionException,
    DbtException,
    DbtInvoker,
    DbtProfileException,
    DbtProjectException,
    DbtRuntime,
    DbtRuntimeException,
    InProcessRunner,
)
from dlh_airflow_common.core.classify import Evidence, classify
from dlh_airflow_common.core.events import redact
from dlh_airflow_common.core.failure import MAX_SQL_BYTES, bounded, first_real_line, with_compiled_sql
from dlh_airflow_common.core.profile_setup import ProfileConfig
from tests.conftest import CANARY, add_model
from tests.pgserver import PgServer, free_port


def _invoker(project: Path, conn: ConnectionInfo, root: Path, **kw: object) -> DbtInvoker:
    return DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=root,  # type: ignore[arg-type]
                      retry_limit=2, retry_delay=0.1, **kw)


def _fails(inv: DbtInvoker, command: DbtCommand, caplog: pytest.LogCaptureFixture) -> DbtException:
    if (inv.project_dir / "dbt_project.yml").read_text().count('version: "1.0.0"'):
        inv.invoke(DbtCommand("deps"))  # the demo's local package: deps never opens a connection
    with caplog.at_level(logging.WARNING), pytest.raises(DbtException) as err:
        inv.invoke(command)
    return err.value


def test_statement_timeout_is_a_sql_error_shown_with_its_sql(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """"canceling statement due to statement timeout" is the query's fault: never retried."""
    add_model(demo_project, "too_slow", "{{ config(pre_hook=\"set statement_timeout = '200ms'\") }}\n"
                                        "-- a query the warehouse gives up on\n"
                                        "select pg_sleep(3) is null as slept\n")
    lines: list[str] = []
    exc = _fails(_invoker(demo_project, pg_conn, runtime_root, progress=lines.append),
                 DbtCommand("run", select="too_slow"), caplog)
    assert type(exc) is DbtRuntimeException, exc
    assert exc.attempts == 1 and "Transient" not in caplog.text
    text = str(exc)
    assert "statement timeout" in text
    # item 9: the SQL itself, not a path into the run dir that is gone after the task
    assert "select pg_sleep(3) is null as slept" in text
    assert "select pg_sleep(3) is null as slept" in "\n".join(lines)  # in the task log too
    assert "compiled code at" not in text and str(runtime_root) not in text
    assert not (runtime_root / "runs").exists() or list((runtime_root / "runs").iterdir()) == []


def test_refused_connection_is_retried_with_the_cause_as_headline(
        demo_project: Path, runtime_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    conn = ConnectionInfo("pg_refused", "postgres", host="127.0.0.1", port=free_port(), login="dbt_user",
                          password=CANARY, schema="warehouse", extra={"connect_timeout": 2})
    exc = _fails(_invoker(demo_project, conn, runtime_root), DbtCommand("run", select="stg_customers"),
                 caplog)
    assert type(exc) is DbtConnectionException and exc.conn_id == "pg_refused"
    assert exc.attempts == 3 and caplog.text.count("Transient dbt failure") == 2
    headline = exc.message
    assert "before running any node: connection to server at" in headline, headline
    assert "Connection refused" in headline and "Encountered an error" not in headline
    assert str(exc).count("Is the server running on that host") == 1, str(exc)  # each message once
    assert CANARY not in str(exc) + caplog.text


def test_bad_password_is_an_auth_error_not_retried(
        demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = ConnectionInfo("pg_wh", "postgres", host="127.0.0.1", port=pg.port, login="dbt_user",
                           password="Not-The-Password-1", schema="warehouse")
    exc = _fails(_invoker(demo_project, wrong, runtime_root), DbtCommand("run", select="stg_customers"),
                 caplog)
    assert isinstance(exc, DbtConnectionAuthException) and isinstance(exc, DbtProfileException)
    assert not exc.retryable and exc.attempts == 1 and "Transient" not in caplog.text
    assert "password authentication failed" in exc.message
    assert "Not-The-Password-1" not in str(exc) + caplog.text


@pytest.mark.parametrize("in_process", [False, True])
def test_invalid_project_file_is_a_project_error_with_the_users_path(
        demo_project: Path, duck: ConnectionInfo, runtime_root: Path, in_process: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    yml = demo_project / "dbt_project.yml"
    yml.write_text(yml.read_text().replace('version: "1.0.0"', "version: 1"))
    kw = {"runner": InProcessRunner()} if in_process else {}
    exc = _fails(_invoker(demo_project, duck, runtime_root, **kw), DbtCommand("build"), caplog)
    assert type(exc) is DbtProjectException, exc
    assert exc.message.endswith("before running any node: at path ['version']: '1' is not valid "
                                "under any of the given schemas"), exc.message
    text = str(exc)
    assert f"Error encountered in {yml}" in text  # the user's file, not the private shadow
    assert str(runtime_root) not in text + caplog.text
    assert text.count("is not valid under any of the given schemas") == 2  # headline + dbt's message


@pytest.mark.parametrize(("evidence", "expected"), [
    # in-process / entry module: dbt's exception classes decide
    (Evidence(["ProjectContractBrokenError", "DbtProjectError", "DbtConfigError", "DbtRuntimeError"]),
     DbtProjectException),
    (Evidence(["DbtProfileError", "DbtConfigError"]), DbtProfileException),
    (Evidence(["FailedToConnectError", "DbtDatabaseError"], "could not connect to server: timed out"),
     DbtConnectionException),
    (Evidence(["FailedToConnectError"], "FATAL: password authentication failed for user"),
     DbtConnectionAuthException),
    (Evidence(["DbtDatabaseError", "DbtRuntimeError"], "Service unavailable, please try again (503)"),
     DbtRuntimeException),  # not a connection failure, whatever the words
    # run_results: a SQL timeout is the query's fault; a lost connection is not
    (Evidence(failed_nodes=[{"status": "error", "message": "canceling statement due to statement "
                                                           "timeout; timed out, try again"}]),
     DbtRuntimeException),
    (Evidence(failed_nodes=[{"status": "error", "message": "server closed the connection unexpectedly"}]),
     DbtConnectionException),
    # a dbt CLI from another venv: event names and text are all there is
    (Evidence(messages=["Encountered an error:\nCompilation Error\n  Model 'x' depends on 'y'"]),
     DbtCompilationException),
    (Evidence(messages=["Encountered an error:\nRuntime Error\n"
                                                               "  at path ['version']\nError encountered "
                                                               "in /p/dbt_project.yml"]),
     DbtProjectException),
    (Evidence(messages=["query timed out, try again later"]),
     DbtRuntimeException),
])
def test_classification(evidence: Evidence, expected: type[DbtException]) -> None:
    assert classify(evidence) is expected


def test_headline_skips_dbt_wrappers_and_sql_is_bounded() -> None:
    assert first_real_line(["Encountered an error:\nDatabase Error\n  connection refused\n"]) == \
        "connection refused"
    assert first_real_line(["", "Runtime Error"]) == "Runtime Error"
    sql = "\n".join(f"select {i}" for i in range(500))
    shown = bounded(sql)
    assert shown.splitlines()[59] == "select 59" and shown.endswith("-- ... (cut)")
    assert len(bounded("x" * 100_000).encode()) <= MAX_SQL_BYTES + 20


def test_shadow_paths_read_as_the_users_project(demo_project: Path, runtime_root: Path) -> None:
    shared = DbtRuntime.create(demo_project, runtime_root=runtime_root)
    deps = DbtRuntime.create(demo_project, runtime_root=runtime_root, for_deps=True)
    real = demo_project / "models" / "a.sql"
    for runtime in (shared, deps):
        inner = runtime.shadow_dir / "models" / "a.sql"
        assert str(runtime_root) in str(inner)
        for shown in (inner, inner.parent.resolve() / "a.sql"):  # via the stable link or its target
            assert runtime.user_paths(f"Error in {shown}: boom") == f"Error in {real}: boom"
    # paths that are not the shadow stay as they are
    other = f"{shared.target_dir}/run/x.sql and {runtime_root}/projects-other/y"
    assert shared.user_paths(other) == other
    shared.cleanup()
    deps.cleanup()


def test_compiled_sql_replaces_a_removed_path_and_is_redacted(tmp_path: Path) -> None:
    gone = tmp_path / "runs" / "run_x" / "target" / "run" / "m.sql"
    on_disk = tmp_path / "compiled.sql"
    on_disk.write_text("select 'from the file' as source\n")
    failures = [
        {"unique_id": "model.p.a", "status": "error",
         "message": f"Database Error in model a\n  boom\n  compiled code at {gone}"},
        {"unique_id": "model.p.b", "status": "error",
         "message": f"Database Error in model b\n  boom\n  compiled code at {on_disk}"},
    ]
    results = {"results": [{"unique_id": "model.p.a", "compiled_code": "select 'S3cret-Value' as k\n"}]}
    rows = with_compiled_sql(failures, results, lambda t: redact(t, ["S3cret-Value"]), target_removed=True)
    assert rows[0]["message"] == "Database Error in model a\n  boom\ncompiled SQL:\nselect '*****' as k"
    assert rows[1]["message"].endswith("compiled SQL:\nselect 'from the file' as source")
    assert "compiled code at" not in rows[0]["message"] + rows[1]["message"]
    kept = with_compiled_sql(failures[:1], results, str, target_removed=False)
    assert f"compiled code at {gone}" in kept[0]["message"]  # a kept target dir: the path is real
