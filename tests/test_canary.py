"""A connection's password stays inside the dbt process: not on disk, not in other processes, not in logs.

The password is a canary unique to each test (suites of other checkouts may run on the same host with
the shared one). Every check first proves it can see the canary where it is, so none passes blind:
the dbt process holds it in its environment (cold start), a planted file and a control process are
found, and a model makes dbt echo it back (read from the warehouse at run time, so no file of the run
holds it) so that our redaction has something to hide.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dlh_airflow_common.core import DbtRuntimeException
from tests.leaks import processes_holding, scan_files
from tests.pgserver import PgServer
from tests.processes import dbt_pids, descendants, parent_of, wait_for_sleep
from tests.warmth import DbtStart

if TYPE_CHECKING:
    from dlh_airflow_common.hooks.dbt import DbtHook

SLEEP = 4
ECHO = "canary echo: "
# Logged by dbt (a `log()` event reaches us unscrubbed), then the model fails: the echo lands in the
# error's output tail, which our redaction must clean.
ECHO_MODEL = (
    "{{ config(materialized='table') }}\n"
    "{% if execute %}\n"
    "  {% set held = run_query('select secret from public.held_secret') %}\n"
    f"  {{% do log('{ECHO}' ~ held.columns[0].values()[0], info=True) %}}\n"
    "{% endif %}\n"
    "select 1 / 0 as boom\n"
)


@pytest.fixture
def canary_project(tmp_path: Path) -> Path:
    """Two models, no packages (no deps to wait for): one sleeps in PostgreSQL, one echoes the password."""
    project = tmp_path / "canary_project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: canary\nversion: '1.0.0'\nconfig-version: 2\nprofile: canary\n"
        "models:\n  canary:\n    +materialized: table\n")
    (project / "models" / "slow.sql").write_text(f"select pg_sleep({SLEEP}) is null as slept\n")
    (project / "models" / "canary_echo.sql").write_text(ECHO_MODEL)
    return project


@pytest.fixture
def secret_pg(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A role and database with a password of their own, as Airflow connection ``canary_pg``; yields it."""
    token = secrets.token_hex(6)
    password, name = f"Wren-{token}-Pw", f"canary_{token}"
    pg.execute(f"create role {name} login password '{password}'")
    pg.execute(f"create database {name} owner {name}")
    pg.execute(f"create table public.held_secret as select '{password}'::text as secret", dbname=name)
    pg.execute(f"grant select on public.held_secret to {name}", dbname=name)
    monkeypatch.setenv("AIRFLOW_CONN_CANARY_PG", json.dumps({
        "conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": name, "password": password,
        "schema": name, "extra": {"schema": "marts", "threads": 4}}))
    yield password
    pg.execute(f"drop database {name} with (force)")
    pg.execute(f"drop role {name}")


def _hook(project: Path, runtime_root: Path) -> DbtHook:
    from dlh_airflow_common.hooks.dbt import DbtHook

    return DbtHook(project, conn_id="canary_pg", runtime_root=str(runtime_root))


def _shown(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], exc: BaseException) -> str:
    """Everything a person or another task sees of a failed run: logs, console, the error and its dict."""
    out, err = capfd.readouterr()
    as_dict = json.dumps(exc.to_dict(), default=str) if hasattr(exc, "to_dict") else ""
    return "\n".join([caplog.text, out, err, str(exc), repr(exc.args), as_dict])


def test_the_password_stays_in_the_dbt_process(
    dbt_start: DbtStart, secret_pg: str, canary_project: Path, runtime_root: Path, pg: PgServer,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    password = secret_pg
    dbt_start.prime(lambda: _hook(canary_project, runtime_root).run_dbt_task("deps"))
    roots = [runtime_root, dbt_start.home]
    errors: list[BaseException] = []

    def build() -> None:
        try:
            _hook(canary_project, runtime_root).run_dbt_task("build")
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.DEBUG):
        thread = threading.Thread(target=build)
        thread.start()
        try:
            wait_for_sleep(pg, f"pg_sleep({SLEEP})")
            # -- while dbt runs ------------------------------------------------------------------
            ours = dbt_pids(runtime_root)
            (dbt,) = [p for p in ours if parent_of(p) not in ours]
            dbt_start.assert_started(dbt)
            tree = descendants(dbt)
            control = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)",
                                        password], env={"CONTROL": password}, stdout=subprocess.PIPE)
            try:
                assert control.stdout is not None
                control.stdout.readline()  # it runs: its environ and cmdline are its own now
                in_environ = processes_holding(password, "environ")
                in_cmdline = processes_holding(password, "cmdline")
            finally:
                control.kill()
                control.wait()
            assert control.pid in in_environ and control.pid in in_cmdline  # the scans can see it
            if dbt_start.mode == "cold":  # a fork's /proc environ is its server's, not what it runs with
                assert dbt in in_environ
            assert in_environ - tree - {control.pid} == set()
            assert in_cmdline - {control.pid} == set()
            planted = runtime_root / ".planted" / ".hidden"
            planted.parent.mkdir()
            planted.write_text(f"x{password}x")
            hits, read = scan_files(roots, password)
            planted.unlink()
            planted.parent.rmdir()
            assert planted in hits  # the file scan reads hidden files in hidden dirs
            assert [h for h in hits if h != planted] == []
            assert any(p.name == "profiles.yml" for p in read), read  # the run's profile, read mid-run
        finally:
            thread.join(120)
    assert not thread.is_alive()
    # -- after the run ---------------------------------------------------------------------------
    (exc,) = errors
    assert isinstance(exc, DbtRuntimeException), exc
    assert exc.summary.counts == {"success": 1, "error": 1}, exc.summary  # slept, then echoed and failed
    shown = _shown(caplog, capfd, exc)
    assert ECHO + "*****" in shown  # dbt did echo the password to us, and it was redacted
    assert password not in shown
    assert scan_files(roots, password)[0] == []


def test_the_log_check_sees_the_password_when_redaction_is_off(
    secret_pg: str, canary_project: Path, runtime_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """Sabotage: with ``redact`` a no-op, the check above must find the echoed password."""
    from dlh_airflow_common.core import events, invoke

    monkeypatch.setenv("DLH_DBT_WARM_START", "0")
    monkeypatch.setenv("DLH_DBT_WARM_DIR", str(tmp_path / "warm-home"))
    monkeypatch.setattr(events, "redact", lambda text, _secrets: text)
    monkeypatch.setattr(invoke, "redact", lambda text, _secrets: text)
    with caplog.at_level(logging.DEBUG), pytest.raises(DbtRuntimeException) as err:
        _hook(canary_project, runtime_root).run_dbt_task("run", select="canary_echo")
    assert ECHO + secret_pg in _shown(caplog, capfd, err.value)
