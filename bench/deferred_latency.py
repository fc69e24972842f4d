"""How much later a deferrable DbtOperator finishes than a synchronous one, for the same dbt command.

Run by hand: ``.venv/bin/python bench/deferred_latency.py [--rounds N] [--check-interval S]``.

Each round runs every command once synchronously (``execute()``) and once deferred (``execute()``
starts the detached run and defers, the trigger runs here in an event loop as the triggerer would
run it, then ``execute_complete()``), alternating which goes first. No scheduler is involved: the
numbers are the library's own overhead. "seen after" is how long after the supervisor wrote its
final status the trigger fired, the delay ``check_interval`` (10 s by default) used to add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRATCH = Path(tempfile.mkdtemp(prefix="dlh-bench-deferred-"))
os.environ.update({
    "AIRFLOW_HOME": str(SCRATCH / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True", "DLH_DBT_RUNTIME_ROOT": str(SCRATCH / "runtime"),
    "DLH_DBT_SHARED_RUNTIME_ROOT": "true",
    "AIRFLOW_CONN_BENCH_DUCK": json.dumps({"conn_type": "duckdb", "host": str(SCRATCH / "wh.duckdb")}),
})

from airflow.sdk.exceptions import TaskDeferred  # noqa: E402

from dlh_airflow_common.core import DbtException  # noqa: E402
from dlh_airflow_common.core.detached import ControlDir  # noqa: E402
from dlh_airflow_common.operators.dbt import DbtOperator  # noqa: E402

COMMANDS = ("test", "build")


def _context(n: int) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="bench_deferred", task_id="dbt", try_number=1, run_id=f"bench_{n}")
    return {"ti": ti}


def _operator(project: Path, command: str, deferrable: bool, check_interval: float) -> DbtOperator:
    return DbtOperator(task_id="dbt", command=command, conn_id="bench_duck", dbt_project_dir=str(project),
                       deferrable=deferrable, check_interval=check_interval)


def run_sync(project: Path, command: str, n: int) -> float:
    started = time.perf_counter()
    _operator(project, command, False, 10).execute(_context(n))  # type: ignore[arg-type]
    return time.perf_counter() - started


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise RuntimeError("the trigger ended without an event")


def run_deferred(project: Path, command: str, n: int, check_interval: float) -> tuple[float, float]:
    """Wall time of the whole task, and how long after dbt's final status the trigger fired."""
    op, context = _operator(project, command, True, check_interval), _context(n)
    started = time.perf_counter()
    try:
        op.execute(context)  # type: ignore[arg-type]
        raise RuntimeError("the operator did not defer")
    except TaskDeferred as deferred:
        trigger, method = deferred.trigger, deferred.method_name
    event = asyncio.run(_first_event(trigger))
    fired = time.time()
    finished = float((ControlDir(Path(event["control_dir"])).read_status() or {}).get("finished") or fired)
    getattr(op, method)(context, event)
    return time.perf_counter() - started, fired - finished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-interval", type=float, default=10.0)
    args = parser.parse_args()
    project = SCRATCH / "demo_project"
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(REPO / "examples" / name, SCRATCH / name)
    table = os.dup(1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # the task log of every run (straight to fd 1): only the table matters here
    try:
        _operator(project, "deps", False, 10).execute(_context(0))  # type: ignore[arg-type]
        _operator(project, "build", False, 10).execute(_context(0))  # type: ignore[arg-type]  # warm
        sync: dict[str, list[float]] = {c: [] for c in COMMANDS}
        deferred: dict[str, list[float]] = {c: [] for c in COMMANDS}
        seen: dict[str, list[float]] = {c: [] for c in COMMANDS}
        for n in range(1, args.rounds + 1):
            for command in COMMANDS:
                sync_first = n % 2 == 1  # alternate, so drift on a shared machine hits both sides
                for side in ("sync", "deferred") if sync_first else ("deferred", "sync"):
                    if side == "sync":
                        sync[command].append(run_sync(project, command, n))
                    else:
                        wall, lag = run_deferred(project, command, n, args.check_interval)
                        deferred[command].append(wall)
                        seen[command].append(lag)
        sys.stdout.flush()
        os.dup2(table, 1)
        print(f"median of {args.rounds} alternating rounds, check_interval={args.check_interval:g}s, "
              "demo project on DuckDB")
        print(f"{'command':<10}{'sync s':>9}{'deferred s':>12}{'ratio':>8}{'extra s':>9}{'seen after s':>14}")
        for command in COMMANDS:
            s, d = statistics.median(sync[command]), statistics.median(deferred[command])
            print(f"{command:<10}{s:>9.2f}{d:>12.2f}{d / s:>8.2f}{d - s:>9.2f}"
                  f"{statistics.median(seen[command]):>14.2f}")
    except DbtException as exc:
        print(f"dbt failed: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(table, 1)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
