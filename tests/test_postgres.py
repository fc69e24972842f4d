"""Real dbt runs on a real PostgreSQL server: concurrency, cancellation, secrets, retries."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCancelledException,
    DbtCommand,
    DbtConnectionException,
    DbtInvoker,
    DbtRuntimeException,
    ProfileConfig,
    SubprocessRunner,
)
from tests.conftest import CANARY, add_model
from tests.pgserver import PgServer
from tests.processes import dbt_pids, dbt_processes, group_pids
from tests.warmth import DbtStart


def _invoker(project: Path, conn: ConnectionInfo, root: Path, **kw: object) -> DbtInvoker:
    return DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=root, **kw)  # type: ignore[arg-type]


def _files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits


def test_build_on_postgres(demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path,
                           pg: PgServer) -> None:
    _invoker(demo_project, pg_conn, runtime_root).invoke(DbtCommand("deps"))
    result = _invoker(demo_project, pg_conn, runtime_root).invoke(DbtCommand("build"))
    assert result.summary.counts == {"success": 5, "pass": 4, "warn": 1}
    rows = pg.execute(f"select count(*), sum(order_count) from {pg_conn.extra['schema']}.customer_orders",
                      dbname="warehouse")
    assert rows == [(5, 6)]


def test_eight_concurrent_runs_are_isolated_and_keep_the_parse_cache(
    demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path
) -> None:
    setup = _invoker(demo_project, pg_conn, runtime_root)
    setup.invoke(DbtCommand("deps"))
    setup.invoke(DbtCommand("build"))  # also warms the partial-parse cache
    selects = ["stg_customers", "stg_orders", "customer_orders", "test_type:generic,stg_orders"]
    expected = [
        {"test.demo.not_null_stg_customers_customer_id", "test.demo.unique_stg_customers_customer_id"},
        {"test.demo.not_null_stg_orders_order_id", "test.demo.unique_stg_orders_order_id",
         "test.demo.accepted_values_stg_orders_status__completed__shipped__placed"},
        set(),
        {"test.demo.not_null_stg_orders_order_id", "test.demo.unique_stg_orders_order_id",
         "test.demo.accepted_values_stg_orders_status__completed__shipped__placed"},
    ]
    results: dict[int, object] = {}

    def work(i: int) -> None:
        inv = _invoker(demo_project, pg_conn, runtime_root, keep_target_artifacts=True)
        try:
            # tests only read the warehouse, so eight at once do not fight over DDL; customer_orders has
            # no test of its own: that run tests nothing, on purpose
            results[i] = inv.invoke(DbtCommand("test", select=selects[i % 4], allow_empty_selection=True))
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    targets = set()
    for i in range(8):
        res = results[i]
        assert not isinstance(res, Exception), res
        ids = {r["unique_id"].rsplit(".", 1)[0] if r["unique_id"].count(".") > 2 else r["unique_id"]
               for r in res.run_results["results"]}  # type: ignore[attr-defined]
        assert ids == expected[i % 4], (i, ids)
        targets.add(res.target_dir)  # type: ignore[attr-defined]
        log = (res.target_dir.parent / "logs" / "dbt.log").read_text()  # type: ignore[attr-defined]
        assert "Partial parsing enabled" in log and "Unable to do partial parsing" not in log
    assert len(targets) == 8
    after = _invoker(demo_project, pg_conn, runtime_root, keep_target_artifacts=True).invoke(
        DbtCommand("parse"))
    assert after.target_dir is not None
    log = (after.target_dir.parent / "logs" / "dbt.log").read_text()
    assert "Partial parsing enabled: 0 files deleted, 0 files added, 0 files changed" in log


# Cold only (a warm fork's cancel: test_processes.py): still a private warm dir, so no leftover server decides.
@pytest.mark.parametrize("dbt_start", ["cold"], indirect=True)
def test_cancel_stops_query_and_process_and_keeps_no_secret(
    dbt_start: DbtStart, demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path, pg: PgServer,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    schema = pg_conn.extra["schema"]
    runner = SubprocessRunner(cancel_grace=20)
    inv = _invoker(demo_project, pg_conn, runtime_root, runner=runner, keep_target_artifacts=True)

    def deps() -> None:
        _invoker(demo_project, pg_conn, runtime_root).invoke(DbtCommand("deps"))

    deps()
    dbt_start.prime(deps, times=1)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            inv.invoke(DbtCommand("build", select="+slow_model", vars={"slow_seconds": 120},
                                  exclude="test_type:data"))
        except Exception as exc:
            outcome["exc"] = exc

    with caplog.at_level(logging.DEBUG):
        thread = threading.Thread(target=work)
        thread.start()
        sleeping = "select pid from pg_stat_activity where state = 'active' and query like '%pg_sleep%' " \
                   "and pid <> pg_backend_pid()"
        pg.wait_until(sleeping, lambda rows: len(rows) == 1, timeout=60)
        pid = runner.pid
        assert pid is not None
        dbt_start.assert_started(pid)  # the mode this test asked for, not a server another test left
        group = group_pids(pid)
        cmdlines = b"".join(Path(f"/proc/{p}/cmdline").read_bytes() for p in group)
        program = b"dlh_airflow_common._dbt_entry" if dbt_start.mode == "cold" else b"dlh_airflow_common.core.warm"
        assert program in cmdlines and CANARY.encode() not in cmdlines  # the command lines were read
        assert pid in dbt_pids(runtime_root)  # the leftover check below can see this run
        started = time.monotonic()
        inv.cancel()
        thread.join(60)
        stopped_in = time.monotonic() - started
    assert not thread.is_alive()
    assert stopped_in < 20, "dbt did not stop within the grace period"
    assert group_pids(pid) == [] and dbt_processes(runtime_root) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    # the warehouse query was cancelled, not left running
    pg.wait_until(sleeping, lambda rows: rows == [], timeout=10)
    log_text = Path(pg.logfile).read_text()
    assert re.search(r"canceling statement due to user request|terminating connection due to administrator",
                     log_text), log_text[-3000:]
    exc = outcome["exc"]
    assert isinstance(exc, DbtCancelledException)
    assert exc.summary is not None
    # partial results: the upstream nodes finished before the cancel
    assert exc.summary.counts.get("success", 0) >= 2
    assert re.search(r"\d+ of \d+ nodes had finished", str(exc))
    # the canary never shows in logs, exception text or files left behind
    out, err = capfd.readouterr()
    assert CANARY not in caplog.text + out + err + str(exc)
    assert _files_containing(runtime_root, CANARY) == []
    assert not pg.execute(f"select 1 from information_schema.tables where table_schema = '{schema}' "
                          "and table_name = 'slow_model'", dbname="warehouse")


def test_failing_sql_with_canary_connection_never_shows_the_password(
    demo_project: Path, pg_conn: ConnectionInfo, runtime_root: Path,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    add_model(demo_project, "syntax_error", "selec 1 as broken")
    inv = _invoker(demo_project, pg_conn, runtime_root, retry_limit=2, retry_delay=0.1,
                   keep_target_artifacts=True)
    _invoker(demo_project, pg_conn, runtime_root).invoke(DbtCommand("deps"))
    with caplog.at_level(logging.DEBUG), pytest.raises(DbtRuntimeException) as err:
        inv.invoke(DbtCommand("run", select="syntax_error"))
    assert 'syntax error at or near "selec"' in str(err.value)
    assert "Transient" not in caplog.text
    out, errout = capfd.readouterr()
    assert CANARY not in caplog.text + out + errout + str(err.value)
    assert _files_containing(runtime_root, CANARY) == []


def test_stopped_server_is_retried_with_backoff_then_raised(demo_project: Path, runtime_root: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    server = PgServer().init().start()
    try:
        server.stop()  # PostgreSQL is down when the run starts
        conn = ConnectionInfo("pg_down", "postgres", host="127.0.0.1", port=server.port, login="postgres",
                              password=CANARY, schema="postgres", extra={"schema": "public"})
        inv = _invoker(demo_project, conn, runtime_root, retry_limit=2, retry_delay=0.5)
        _invoker(demo_project, conn, runtime_root).invoke(DbtCommand("deps"))
        with caplog.at_level(logging.WARNING), pytest.raises(DbtConnectionException) as err:
            inv.invoke(DbtCommand("seed"))
    finally:
        server.destroy()
    assert err.value.conn_id == "pg_down"
    assert "Connection refused" in str(err.value) or "connection refused" in str(err.value).lower()
    retries = [r.getMessage() for r in caplog.records if "Transient dbt failure" in r.getMessage()]
    assert len(retries) == 2, retries
    waits = [float(re.search(r"retrying in ([\d.]+)s", m).group(1)) for m in retries]  # type: ignore[union-attr]
    assert waits[0] < waits[1]
    assert "attempt 1 of 3" in retries[0] and "attempt 2 of 3" in retries[1]
    assert CANARY not in caplog.text + str(err.value)
