"""How much later a deferrable DbtOperator finishes than a synchronous one, for the same dbt command.

Run by hand: ``.venv/bin/python bench/deferred_latency.py [--rounds N] [--check-interval S]
[--state-store s3]``.

Each round runs every command once synchronously (``execute()``) and once deferred (``execute()``
starts the detached run and defers at once, the trigger runs here in an event loop as the triggerer
would run it, then ``execute_complete()``), alternating which goes first. No scheduler is involved
and Airflow's own resume delay (``MIN_DEFERRAL_SECONDS``, a race in Airflow) is left out: the
numbers are the library's own overhead. "seen after" is how long after dbt ended (the supervisor's
``finished`` time) the trigger fired; the goal is at most ``SEEN_GOAL`` seconds (median), also with
``--state-store s3``, where the run's status, progress and artifacts reach the trigger only through
a moto S3 server on loopback (tests/s3server.py) and the request counts per run are printed.
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
from dlh_airflow_common.operators.dbt import DbtOperator  # noqa: E402

COMMANDS = ("test", "build")
SEEN_GOAL = 1.0


def _context(n: int) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="bench_deferred", task_id="dbt", try_number=1, run_id=f"bench_{n}")
    return {"ti": ti}


def _operator(project: Path, command: str, deferrable: bool, check_interval: float) -> DbtOperator:
    return DbtOperator(task_id="dbt", command=command, conn_id="bench_duck", dbt_project_dir=str(project),
                       deferrable=deferrable, check_interval=check_interval, defer_after=0)


def run_sync(project: Path, command: str, n: int) -> float:
    started = time.perf_counter()
    _operator(project, command, False, 10).execute(_context(n))  # type: ignore[arg-type]
    return time.perf_counter() - started


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise RuntimeError("the trigger ended without an event")


def run_deferred(project: Path, command: str, n: int,
                 check_interval: float) -> tuple[float, float, dict[str, Any] | None]:
    """Wall time of the whole task, how long after dbt ended the trigger fired, the store requests."""
    op, context = _operator(project, command, True, check_interval), _context(n)
    started = time.perf_counter()
    try:
        op.execute(context)  # type: ignore[arg-type]
        raise RuntimeError("the operator did not defer")
    except TaskDeferred as deferred:
        trigger, method = deferred.trigger, deferred.method_name
    trigger.resume_not_before = None  # Airflow's resume race is not the library's latency
    event = asyncio.run(_first_event(trigger))
    fired = time.time()
    status = trigger._control.read_status() or {}  # what the trigger read: the store's copy, or the local dir
    finished = float(status.get("finished") or fired)
    getattr(op, method)(context, event)
    return time.perf_counter() - started, fired - finished, event.get("store_requests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-interval", type=float, default=10.0)
    parser.add_argument("--state-store", choices=["s3"], help="status, progress and artifacts through a "
                        "moto S3 server on loopback (no shared runtime root); prints request counts per run")
    args = parser.parse_args()
    s3 = _start_store() if args.state_store else None
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
        requests: dict[str, dict[str, Any] | None] = {}
        for n in range(1, args.rounds + 1):
            for command in COMMANDS:
                sync_first = n % 2 == 1  # alternate, so drift on a shared machine hits both sides
                for side in ("sync", "deferred") if sync_first else ("deferred", "sync"):
                    if side == "sync":
                        sync[command].append(run_sync(project, command, n))
                    else:
                        wall, lag, requests[command] = run_deferred(project, command, n, args.check_interval)
                        deferred[command].append(wall)
                        seen[command].append(lag)
        sys.stdout.flush()
        os.dup2(table, 1)
        where = f"state store s3 ({s3.endpoint})" if s3 else "shared runtime root"
        print(f"median (min) of {args.rounds} alternating rounds, check_interval={args.check_interval:g}s, "
              f"demo project on DuckDB, {where}")
        print(f"{'command':<10}{'sync s':>14}{'deferred s':>14}{'ratio':>8}{'extra s':>9}"
              f"{'seen after s':>16}")
        missed = []
        for command in COMMANDS:
            s, d, lag = (statistics.median(x[command]) for x in (sync, deferred, seen))
            print(f"{command:<10}{_cell(sync[command]):>14}{_cell(deferred[command]):>14}{d / s:>8.2f}"
                  f"{d - s:>9.2f}{_cell(seen[command]):>16}")
            if lag > SEEN_GOAL:
                missed.append(f"{command} seen {lag:.2f}s after dbt ended (goal <= {SEEN_GOAL:g}s)")
            if requests.get(command):
                print(f"    store requests of the last {command} run: {requests[command]}")
        print("goal met: resume seen <= 1s after dbt ended" if not missed else "MISSED: " + "; ".join(missed))
        return 1 if missed else 0
    except DbtException as exc:
        print(f"dbt failed: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(table, 1)
        shutil.rmtree(SCRATCH, ignore_errors=True)
        if s3 is not None:
            s3.stop()


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


def _start_store() -> Any:
    """A moto S3 server, its bucket and connection; the runtime root is then declared unshared."""
    sys.path.insert(0, str(REPO))
    from tests.s3server import BUCKET, CONN_ID, S3Server

    s3 = S3Server().start()
    s3.create_bucket(BUCKET)
    conn_var, conn = s3.connection_env()
    os.environ.update({"DLH_DBT_STATE_STORE": f"s3://{BUCKET}/bench", "DLH_DBT_STATE_STORE_CONN_ID": CONN_ID,
                       conn_var: conn})
    os.environ.pop("DLH_DBT_SHARED_RUNTIME_ROOT", None)
    return s3


if __name__ == "__main__":
    sys.exit(main())
