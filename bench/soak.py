"""Soak: N concurrent dbt builds x R rounds, each round on a fresh runtime root (issue "Many tasks at once").

Every round starts N ``DbtInvoker(...).invoke("build")`` threads at once (one schema, or one DuckDB
file, per run) on a runtime root no run has used yet, after one ``dbt deps`` there. It prints, per
round and in total: successes, failures by cause (the exception class and its headline's first
words), run dirs left behind, and the round's wall time against one run alone on the same kind of
root. Exits non-zero when any run failed or left its dir.

    python bench/soak.py                      # 8 x 50 on PostgreSQL (a server this script starts)
    python bench/soak.py --runs 8 --rounds 5 --warehouse duckdb --warm
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from dlh_airflow_common.core import (  # noqa: E402
    ConnectionInfo,
    DbtCommand,
    DbtInvoker,
    ProfileConfig,
)


def _cause(exc: BaseException) -> str:
    """The failure's class and headline without paths and numbers, so equal causes count together."""
    head = (str(exc).splitlines() or [""])[0]
    head = re.sub(r"/\S+", "<path>", head)
    return f"{type(exc).__name__}: {re.sub(r'[0-9a-f]{6,}|[0-9]+', '#', head)[:110]}"


def _build(project: Path, root: Path, conn: ConnectionInfo, schema: str) -> BaseException | None:
    try:
        DbtInvoker(project, ProfileConfig(connection=conn, schema_override=schema), runtime_root=root).invoke(
            DbtCommand("build", exclude="test_type:data"))
    except BaseException as exc:  # counted by cause
        return exc
    return None


def _fresh_root(base: Path, project: Path, conn: ConnectionInfo, name: str) -> Path:
    root = base / name
    DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=root).invoke(DbtCommand("deps"))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="concurrent builds per round (8)")
    parser.add_argument("--rounds", type=int, default=50, help="rounds, each on a fresh runtime root (50)")
    parser.add_argument("--warehouse", choices=["postgres", "duckdb"], default="postgres")
    parser.add_argument("--warm", action="store_true",
                        help="warm dbt starts (default: cold, DLH_DBT_WARM_START=0)")
    args = parser.parse_args()
    os.environ["DLH_DBT_WARM_START"] = "1" if args.warm else "0"
    base = Path(tempfile.mkdtemp(prefix="dlh-soak-"))
    os.environ["DLH_DBT_WARM_DIR"] = str(base / "warm")
    project = base / "demo_project"
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(REPO / "examples" / name, base / name)
    pg = None
    try:
        if args.warehouse == "postgres":
            from tests.pgserver import PgServer

            pg = PgServer().init().start()
            pg.execute("create database warehouse")

            def conn(i: int) -> ConnectionInfo:
                assert pg is not None
                return ConnectionInfo("pg", "postgres", host="127.0.0.1", port=pg.port, login="postgres",
                                      password=pg.password, schema="warehouse", extra={"threads": 4})
        else:
            def conn(i: int) -> ConnectionInfo:
                return ConnectionInfo("duck", "duckdb", host=str(base / f"w{i}.duckdb"), extra={"threads": 2})

        alone = []
        for n in range(3):
            root = _fresh_root(base, project, conn(0), f"alone{n}")
            started = time.monotonic()
            failed = _build(project, root, conn(0), "alone")
            alone.append(time.monotonic() - started)
            if failed is not None:
                print(f"one run alone failed: {_cause(failed)}")
                return 1
        solo = statistics.median(alone)
        print(f"one run alone: median {solo:.1f}s (min {min(alone):.1f}s, 3 runs); "
              f"warehouse {args.warehouse}, "
              f"{'warm' if args.warm else 'cold'} starts, {args.runs} runs x {args.rounds} rounds")
        print(f"{'round':>5} {'ok':>4} {'failed':>6} {'dirs left':>9} {'wall s':>7} {'x alone':>8}")
        total_ok, causes, left_total, walls = 0, collections.Counter[str](), 0, []
        for r in range(args.rounds):
            root = _fresh_root(base, project, conn(0), f"round{r}")
            outcomes: list[BaseException | None] = [None] * args.runs
            gate = threading.Barrier(args.runs)

            def work(i: int, root: Path = root, outcomes: list[Any] = outcomes,
                     gate: threading.Barrier = gate) -> None:
                gate.wait(60)
                outcomes[i] = _build(project, root, conn(i), f"e{i}")

            started = time.monotonic()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(args.runs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(900)
            wall = time.monotonic() - started
            walls.append(wall)
            failed = [o for o in outcomes if o is not None]
            left = len(list((root / "runs").iterdir()))
            total_ok += args.runs - len(failed)
            left_total += left
            causes.update(_cause(f) for f in failed)
            print(f"{r + 1:>5} {args.runs - len(failed):>4} {len(failed):>6} {left:>9} {wall:>7.1f} "
                  f"{wall / solo:>8.2f}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
        runs = args.runs * args.rounds
        print(f"\ntotal: {total_ok}/{runs} succeeded, {runs - total_ok} failed, {left_total} run dirs left; "
              f"round wall median {statistics.median(walls):.1f}s (min {min(walls):.1f}s) = "
              f"{statistics.median(walls) / solo:.2f}x one run alone")
        for cause, count in causes.most_common():
            print(f"  {count:>4}  {cause}")
        return 0 if total_ok == runs and left_total == 0 else 1
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
