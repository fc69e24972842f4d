"""The leftover-process helper must see a real dbt run, or every "nothing left" check is blind."""

from __future__ import annotations

from pathlib import Path

from dlh_airflow_common.core import (
    ConnectionInfo,
    DbtCancelledException,
    DbtCommand,
    DbtInvoker,
    ProfileConfig,
    SubprocessRunner,
)
from tests.pgserver import PgServer
from tests.processes import dbt_processes, group_pids, no_dbt_processes, start_until_sleeping


def test_helper_sees_a_running_dbt_and_then_none(demo_project: Path, pg_conn: ConnectionInfo,
                                                   runtime_root: Path, pg: PgServer) -> None:
    runner = SubprocessRunner(cancel_grace=20)
    inv = DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root,
                     runner=runner)
    assert dbt_processes(runtime_root) == []
    DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=runtime_root).invoke(
        DbtCommand("deps"))
    thread, errors = start_until_sleeping(lambda: inv.invoke(DbtCommand(
        "build", select="+slow_model", vars={"slow_seconds": 120}, exclude="test_type:data")), pg)
    seen = dbt_processes(runtime_root)
    pid = runner.pid
    assert pid is not None and group_pids(pid)
    # the dbt child is the entry module, not a bin/dbt command line, and the helper still sees it
    assert any(s.startswith(f"{pid} ") and "dlh_airflow_common._dbt_entry" in s for s in seen), seen
    assert dbt_processes(runtime_root.parent / "another-root") == []  # other runs are not ours
    inv.cancel()
    thread.join(60)
    assert isinstance(errors[0], DbtCancelledException)
    assert no_dbt_processes(runtime_root)
