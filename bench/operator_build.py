"""Benchmark one DbtOperator ``build`` through real Airflow against bare ``dbt build``, side by side.

Run by hand: ``.venv/bin/python bench/operator_build.py [--repeat N] [--models N] [--max-ratio R]``.

Both sides build the same generated DuckDB project (each into its own DuckDB file) after one warm-up
run, so partial parsing is warm on both. The operator runs through ``dag.test()``; its ``execute()``
and the phases inside it are timed by wrapping library functions in this process (nothing in the
library is changed). Exits 1 when the median ``execute()`` wall / median bare wall exceeds
``--max-ratio``. CPU seconds (this process plus its finished children, i.e. dbt) are shown too:
on a shared, busy machine they move much less than wall time. By default the operator, like every
run whose artifacts are removed, skips dbt's debug dbt.log that bare dbt writes;
``--keep-target-artifacts`` makes it keep (and write) both, for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from genproject import generate_project, write_profiles

DBT = str(Path(sys.executable).parent / "dbt")
DAG_ID = "dlh_bench_operator_build"
CONN_ID = "bench_duck"
PROFILE_THREADS = 1  # what genproject.write_profiles puts in the bare profile
UNABLE = "Unable to do partial parsing"
OWN_CPU = "CPU of the task process in execute()"

# Phases inside execute() timed by wrapping (module, class or None, attribute). "nested" ones run inside
# another timed phase and are shown for attribution only.
PHASES: tuple[tuple[str, str, str | None, str, bool], ...] = (
    ("pre: connection lookup", "dlh_airflow_common.hooks.dbt", "DbtHook", "get_connection_info", True),
    ("pre: runtime create", "dlh_airflow_common.core.runtime", "DbtRuntime", "create", False),
    ("pre: seed partial parse", "dlh_airflow_common.core.runtime", "DbtRuntime", "seed_partial_parse", False),
    ("dbt process", "dlh_airflow_common.core.runners", "SubprocessRunner", "run", False),
    ("post: read run_results", "dlh_airflow_common.core.invoke", None, "load_run_results", False),
    ("post: publish partial parse", "dlh_airflow_common.core.runtime", "DbtRuntime", "publish_partial_parse",
     False),
    ("post: copy artifacts", "dlh_airflow_common.operators.dbt", None, "copy_artifacts", False),
    ("post: runtime cleanup", "dlh_airflow_common.core.runtime", "DbtRuntime", "cleanup", False),
    ("post: metrics", "dlh_airflow_common.operators.reporting", None, "emit_run_metrics", False),
    ("post: lineage", "dlh_airflow_common.operators.reporting", None, "task_lineage", False),
)

DAG_TEMPLATE = '''"""Written by bench/operator_build.py: an airflow dag with one DbtOperator build."""

from datetime import datetime

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    DbtOperator(task_id="build", command="build", dbt_project_dir={project!r}, conn_id={conn_id!r},
                keep_target_artifacts={keep!r}, select={select!r})
'''


@dataclass
class Sample:
    """One build: wall and CPU time, dbt's elapsed_time (run_results.json), whether it parsed partially."""

    wall: float
    cpu: float
    dbt_elapsed: float
    partial: bool
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class Probe:
    """What the wrappers recorded during one dag.test()."""

    execute_start: float = 0.0
    execute_end: float = 0.0
    execute_cpu: float = 0.0
    execute_own_cpu: float = 0.0  # this (Airflow task) process only: reading dbt's output, logging, lineage
    process_start: float = 0.0
    process_end: float = 0.0
    dbt_elapsed: float = 0.0
    unable_to_partial_parse: bool = False
    phases: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


PROBE = Probe()


def make_buildable(project: Path) -> Path:
    """genproject targets parsing: its ``union all`` of parents that share ancestors repeats ids, so
    ``unique`` tests fail under ``dbt build``. Rows are (id, label) pairs fixed in the first layer,
    so ``union`` removes exactly the repeats and every test passes; the project's shape is unchanged."""
    for sql in (project / "models").rglob("*.sql"):
        sql.write_text(sql.read_text().replace("\nunion all\n", "\nunion\n"))
    return project


def own_cpu_seconds() -> float:
    """User+system CPU of this process (all its threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def cpu_seconds() -> float:
    """User+system CPU of this process and of its children that have been waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own_cpu_seconds() + children.ru_utime + children.ru_stime


# -- bare dbt ---------------------------------------------------------------------------------------
def bare_build(project: Path, profiles_dir: Path, threads: int, json_logs: bool,
               select: list[str] | None = None) -> Sample:
    """``dbt build`` in the project copy, as a user would run it (stdout captured, not shown)."""
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    if json_logs:  # the log settings the library's runner gives dbt: isolates their cost
        from dlh_airflow_common.core.runners import BASE_ENV

        env.update(BASE_ENV)
    argv = [DBT, "build", "--project-dir", str(project), "--profiles-dir", str(profiles_dir)]
    if threads != PROFILE_THREADS:
        argv += ["--threads", str(threads)]
    if select:
        argv += ["--select", *select]
    shutil.rmtree(project / "logs", ignore_errors=True)  # dbt appends to dbt.log: one run per log
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.exit(f"bare dbt build failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    elapsed = json.loads((project / "target" / "run_results.json").read_text())["elapsed_time"]
    return Sample(wall, cpu, float(elapsed), UNABLE not in proc.stdout)


# -- Airflow + DbtOperator ----------------------------------------------------------------------------
def configure_airflow(base: Path, project: Path, warehouse: Path, threads: int, keep: bool,
                      select: list[str] | None = None) -> Path:
    """Environment for Airflow and the library; must run before anything imports Airflow."""
    if any(name == "airflow" or name.startswith("airflow.") for name in sys.modules):
        raise RuntimeError("Airflow was imported before its environment was set")
    dags = base / "dags"
    dags.mkdir()
    (dags / "bench_dag.py").write_text(DAG_TEMPLATE.format(dag_id=DAG_ID, project=str(project), keep=keep,
                                                           conn_id=CONN_ID, select=select))
    os.environ.update({
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DLH_DBT_RUNTIME_ROOT": str(base / "dbt-runtime"),
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
            {"conn_type": "duckdb", "host": str(warehouse), "extra": {"threads": threads}}),
    })
    return dags


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            PROBE.phases[name] = PROBE.phases.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def install_probes() -> None:
    """Wrap DbtOperator.execute, the dbt process and the phases around it; record into PROBE."""
    import importlib

    from dlh_airflow_common.core import invoke
    from dlh_airflow_common.core.runners import DbtCall, EventSink, SubprocessRunner, TextSink
    from dlh_airflow_common.operators.dbt import DbtOperator

    for name, module_name, class_name, attr, _nested in PHASES:
        owner: Any = importlib.import_module(module_name)
        if class_name:
            owner = getattr(owner, class_name)
        static = inspect.getattr_static(owner, attr)
        if isinstance(static, classmethod):
            setattr(owner, attr, classmethod(_timed(name, static.__func__)))
        else:
            setattr(owner, attr, _timed(name, static))

    timed_run = SubprocessRunner.run

    def run(self: SubprocessRunner, call: DbtCall, on_event: EventSink, on_text: TextSink,
            timeout: float | None = None) -> Any:
        def sink(event: dict[str, Any]) -> None:
            info = event.get("info") or {}
            if info.get("name") == "UnableToPartialParse" or UNABLE in str(info.get("msg", "")):
                PROBE.unable_to_partial_parse = True
            on_event(event)

        PROBE.process_start = time.perf_counter()
        try:
            return timed_run(self, call, sink, on_text, timeout)
        finally:
            PROBE.process_end = time.perf_counter()

    SubprocessRunner.run = run  # type: ignore[method-assign]

    timed_load = getattr(invoke, "load_run_results")  # noqa: B009 - the library reads run_results.json anyway: take elapsed_time

    def load_run_results(target: Path) -> dict[str, Any]:
        data: dict[str, Any] = timed_load(target)
        PROBE.dbt_elapsed = float(data.get("elapsed_time") or 0.0)
        return data

    setattr(invoke, "load_run_results", load_run_results)  # noqa: B010

    execute = DbtOperator.execute  # already wrapped by Airflow's ExecutorSafeguard; kwargs pass through

    def timed_execute(self: DbtOperator, *args: Any, **kwargs: Any) -> Any:
        PROBE.execute_start, cpu, own = time.perf_counter(), cpu_seconds(), own_cpu_seconds()
        try:
            return execute(self, *args, **kwargs)
        finally:
            PROBE.execute_end, PROBE.execute_cpu = time.perf_counter(), cpu_seconds() - cpu
            PROBE.execute_own_cpu = own_cpu_seconds() - own

    DbtOperator.execute = timed_execute  # type: ignore[method-assign]


@contextlib.contextmanager
def output_to(log_file: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (the task log dag.test() prints) to a file, at fd level."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def operator_build(dag: Any, log_file: Path) -> tuple[Sample, Sample]:
    """One dag.test(): (dag.test wall, execute() wall with its phases)."""
    PROBE.reset()
    start, cpu = time.perf_counter(), cpu_seconds()
    with output_to(log_file):
        dag_run = dag.test()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if dag_run.state != "success":
        tail = log_file.read_text(errors="replace")[-4000:]
        sys.exit(f"dag.test() ended {dag_run.state}; task log tail ({log_file}):\n{tail}")
    p = PROBE
    phases = {
        **p.phases,
        "pre: execute start -> dbt start": p.process_start - p.execute_start,
        "post: dbt end -> execute return": p.execute_end - p.process_end,
        "Airflow around execute()": wall - (p.execute_end - p.execute_start),
        OWN_CPU: p.execute_own_cpu,
    }
    partial = not p.unable_to_partial_parse
    return (Sample(wall, cpu, p.dbt_elapsed, partial),
            Sample(p.execute_end - p.execute_start, p.execute_cpu, p.dbt_elapsed, partial, phases))


# -- report -------------------------------------------------------------------------------------------
def med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def report(results: dict[str, list[Sample]], max_ratio: float) -> bool:
    """Print the table, the ratios and the phase breakdown; return whether the goal is met."""
    print(f"\n{'variant':<30}{'median wall':>12}{'min wall':>10}{'median CPU':>12}{'dbt elapsed':>13}"
          f"{'partial parse':>15}")
    for name, samples in results.items():
        walls = [s.wall for s in samples]
        elapsed, cpu = med([s.dbt_elapsed for s in samples]), med([s.cpu for s in samples])
        print(f"{name:<30}{med(walls):>11.3f}s{min(walls):>9.3f}s{cpu:>11.3f}s{elapsed:>12.3f}s"
              f"{f'{sum(s.partial for s in samples)}/{len(samples)}':>15}")
    bare = results["bare dbt build"]
    execute = results["operator execute()"]
    print(f"\n{'ratio vs bare dbt build':<30}{'median wall':>12}{'min wall':>10}{'median CPU':>12}")
    others = [n for n in results if n != "bare dbt build"]
    for name in others:
        ratio = med([s.wall for s in results[name]]) / med([s.wall for s in bare])
        low = min(s.wall for s in results[name]) / min(s.wall for s in bare)
        cpu = med([s.cpu for s in results[name]]) / med([s.cpu for s in bare])
        goal = {"operator execute()": f"  (goal <= {max_ratio})",
                "operator dag.test()": "  (includes Airflow's per-run overhead)"}.get(name, "")
        print(f"{name:<30}{ratio:>12.3f}{low:>10.3f}{cpu:>12.3f}{goal}")
    print("\nwhere execute() time goes (median seconds per run; indented rows are inside another row):")
    names = [n for n, *_ in PHASES] + ["pre: execute start -> dbt start", "post: dbt end -> execute return",
                                        "Airflow around execute()", OWN_CPU]
    nested = {n for n, *_, is_nested in PHASES if is_nested}
    for name in names:
        values = [s.phases.get(name, 0.0) for s in execute]
        indent = "  " if name in nested else ""
        print(f"  {indent + name:<40}{med(values):>9.3f}s")
    ratio = med([s.wall for s in execute]) / med([s.wall for s in bare])
    ok = ratio <= max_ratio
    print(f"\n{'PASS' if ok else 'FAIL'}: operator execute()/bare dbt build median wall ratio {ratio:.3f}"
          f" (goal <= {max_ratio})")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed builds per variant (default 5)")
    parser.add_argument("--models", type=int, default=500, help="models in the project (default 500)")
    parser.add_argument("--threads", type=int, default=PROFILE_THREADS,
                        help=f"dbt threads on both sides (default {PROFILE_THREADS})")
    parser.add_argument("--max-ratio", type=float, default=1.05,
                        help="goal for operator execute()/bare median wall (default 1.05)")
    parser.add_argument("--bare-json-logs", action="store_true",
                        help="also time bare dbt with the library's JSON log settings")
    parser.add_argument("--keep-target-artifacts", action="store_true",
                        help="operator keeps target and the debug dbt.log, as bare dbt does (like for like)")
    parser.add_argument("--select", nargs="+", help="build only these nodes on both sides (a node task's "
                        "build: e.g. m_000, a first-layer model with tests)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (task logs, projects)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="dlh_bench_op_"))
    try:
        project = make_buildable(generate_project(base / "project", models=args.models))
        bare_project = Path(shutil.copytree(project, base / "bare_project"))
        profiles_dir = write_profiles(base / "profiles", base / "bare.duckdb")
        dags_folder = configure_airflow(base, project, base / "operator.duckdb", args.threads,
                                        args.keep_target_artifacts, args.select)

        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        log_file = base / "task.log"
        with output_to(log_file):
            db.resetdb()
        bag = DagBag(str(dags_folder))
        if bag.import_errors:
            sys.exit(f"DAG import errors: {bag.import_errors}")
        dag = bag.get_dag(DAG_ID)
        install_probes()

        variants = ["bare dbt build", *(["bare dbt build (JSON logs)"] if args.bare_json_logs else []),
                    "operator execute()", "operator dag.test()"]
        results: dict[str, list[Sample]] = {name: [] for name in variants}
        for i in range(args.repeat + 1):  # round 0 warms both sides (full parse, views created)
            # Alternate who goes first: a machine that slows down or speeds up within a round
            # (other load, page cache, CPU boost) must not favour one side.
            if i % 2:
                test_wall, execute = operator_build(dag, log_file)
            bare = bare_build(bare_project, profiles_dir, args.threads, json_logs=False, select=args.select)
            bare_json = (bare_build(bare_project, profiles_dir, args.threads, json_logs=True,
                                    select=args.select) if args.bare_json_logs else None)
            if not i % 2:
                test_wall, execute = operator_build(dag, log_file)
            label = "warm-up" if i == 0 else f"round {i}/{args.repeat}"
            print(f"{label}: bare {bare.wall:.2f}s, operator execute() {execute.wall:.2f}s "
                  f"(dbt process {execute.phases['dbt process']:.2f}s), dag.test() {test_wall.wall:.2f}s"
                  + (f", bare JSON logs {bare_json.wall:.2f}s" if bare_json else ""), file=sys.stderr)
            if i == 0:
                continue
            results["bare dbt build"].append(bare)
            if bare_json is not None:
                results["bare dbt build (JSON logs)"].append(bare_json)
            results["operator execute()"].append(execute)
            results["operator dag.test()"].append(test_wall)
        ok = report(results, args.max_ratio)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average now {os.getloadavg()[0]:.2f}; total runtime {time.perf_counter() - started:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
