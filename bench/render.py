"""Benchmark importing a DAG file that renders a dbt manifest: bare floor vs ours (warm cache) vs Cosmos.

Run by hand: ``.venv/bin/python bench/render.py [--quick] [--sizes 100 500 5000] [--rounds N]
[--cosmos-python PATH]`` (``--cosmos-python`` or ``DLH_BENCH_COSMOS_PYTHON``: an existing venv's python
with Cosmos 1.15 and our Airflow, used as it is instead of building one).

For each size a synthetic manifest and project (``genmanifest``) are written under ``bench/out/render``;
three DAG files import them, each in a fresh subprocess that has already imported ``airflow.sdk`` and
the serializer (what a DAG processor holds), so the time is the DAG file's own import:

- floor: N bare ``EmptyOperator`` tasks, no edges (the goal's reference);
- floor_nogc: the same with cyclic GC paused around the loop, as ours pauses it around its render
  (without the pause ours costs ~0.3 s more CPU at 5,000 models): ours over it says how much of the
  margin is that pause;
- ours: ``dbt_dag(shape="nodes", manifest_path=...)`` with a warm graph cache (an asset declared per
  model, on a PostgreSQL connection given as an environment variable), plus the
  ``DagSerialization.to_dict``/``from_dict`` round trip the DAG processor pays on every parse;
- cosmos: ``DbtDag`` with ``LoadMode.DBT_MANIFEST`` (Cosmos 1.15), run in a throwaway venv that this
  script builds under ``bench/out/`` with our Airflow pinned, so Cosmos never becomes our dependency.

Peak RSS, the measure of the RSS goal, is the whole child process's peak RSS (``VmHWM``) after the import:
Python with Airflow's SDK and serializer imported (the DAG processor's own floor) plus what the DAG
file adds. The "added" columns subtract the peak before the import: what the DAG file itself costs.

Contenders alternate within each round (order reversed every other round); medians and minimums are
reported. Goals (issue 9) at the largest size: ours <= 1.5x floor, <= 1/3 of Cosmos time, peak RSS <=
1/2 of Cosmos. Exits 1 when a goal is missed (2 when a DAG does not render every model); the last
line holds the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from genmanifest import generate

OUT = Path(__file__).resolve().parent / "out" / "render"
COSMOS_VENV = Path(__file__).resolve().parent / "out" / "cosmos-venv"
COSMOS_SPEC = ("astronomer-cosmos==1.15.*", "apache-airflow==3.3.2")
GOAL_VS_FLOOR, GOAL_VS_COSMOS, GOAL_RSS = 1.5, 1 / 3, 1 / 2
MAIN = ("floor", "ours", "cosmos")
CONTENDERS = (*MAIN, "floor_nogc")

# Runs in the fresh subprocess: argv = dag file, kind, expected model tasks, serialize (0/1).
CHILD = r'''
import importlib.util, json, sys, time
import airflow.sdk  # noqa: F401  what the DAG processor has imported before any DAG file
from airflow.serialization.serialized_objects import DagSerialization
path, kind, expected, serialize = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"


def peak_mb():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


base_mb = peak_mb()
start, cpu = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("bench_dag", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
rss_mb = peak_mb()
dag = module.dag
if kind.startswith("floor"):
    models = len(dag.tasks)
elif kind == "ours":
    models = sum(t.task_id.startswith("model.") for t in dag.tasks)
    assert all(t.outlets for t in dag.tasks if t.task_id.startswith("model.")), "no asset declared"
else:
    models = sum(type(t).__name__ == "DbtRunLocalOperator" for t in dag.tasks)
ser = 0.0
if serialize:
    start = time.perf_counter()
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    ser = time.perf_counter() - start
    assert len(restored.task_dict) == len(dag.task_dict)
print(json.dumps({"seconds": seconds, "cpu": cpu, "rss_mb": rss_mb, "base_mb": base_mb, "models": models,
                  "tasks": len(dag.tasks), "edges": sum(len(t.downstream_task_ids) for t in dag.tasks),
                  "ser": ser}))
'''

FLOOR_DAG = '''from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("bench_floor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    for i in range({n}):
        EmptyOperator(task_id=f"model.m_{{i:05d}}")
'''

FLOOR_NOGC_DAG = '''import gc
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("bench_floor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    gc.disable()
    try:
        for i in range({n}):
            EmptyOperator(task_id=f"model.m_{{i:05d}}")
    finally:
        gc.enable()
'''

OURS_DAG = '''from datetime import datetime

from dlh_airflow_common.rendering import DbtProject, dbt_dag

dag = dbt_dag("bench_ours", DbtProject(project_dir={project!r}, conn_id="warehouse", shape="nodes",
                                       manifest_path={manifest!r}),
              schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
'''

COSMOS_DAG = '''from datetime import datetime

from cosmos import DbtDag, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import LoadMode

dag = DbtDag(
    dag_id="bench_cosmos",
    project_config=ProjectConfig(dbt_project_path={project!r}, manifest_path={manifest!r}),
    profile_config=ProfileConfig(profile_name="bench_render", target_name="dev",
                                 profiles_yml_filepath={profiles!r}),
    execution_config=ExecutionConfig(),
    render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST),
    schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
)
'''

PROFILES = '''bench_render:
  target: dev
  outputs:
    dev: {type: postgres, host: localhost, port: 5432, user: bench, password: bench, dbname: warehouse,
          schema: analytics, threads: 4}
'''


@dataclass
class Run:
    seconds: float  # wall time of the DAG file's import
    cpu: float  # CPU time of the same (moves less than wall on a busy machine)
    rss_mb: float  # peak RSS of the process after the import
    base_mb: float  # peak RSS before it: python with airflow.sdk and the serializer imported
    models: int
    tasks: int
    edges: int
    ser: float


def _uv() -> list[str]:
    for cmd in (["uv"], [sys.executable, "-m", "uv"], ["python3", "-m", "uv"]):
        exe = shutil.which(cmd[0])
        if exe and subprocess.run([exe, *cmd[1:], "--version"], capture_output=True).returncode == 0:
            return [exe, *cmd[1:]]
    raise SystemExit("uv is needed to build the Cosmos venv: python3 -m pip install uv")


def cosmos_python() -> Path:
    """The throwaway venv's python, built once per spec with every shared package pinned to ours."""
    python = COSMOS_VENV / "bin" / "python"
    marker = COSMOS_VENV / ".bench-spec"
    frozen = subprocess.run([*_uv(), "pip", "freeze", "--python", sys.executable], check=True,
                            capture_output=True, text=True).stdout
    pins = [line for line in frozen.splitlines() if line and not line.startswith("-e")
            and not line.startswith("dlh-airflow-common")]
    spec = "\n".join([*COSMOS_SPEC, *pins])
    if python.exists() and marker.is_file() and marker.read_text() == spec:
        return python
    print(f"building the Cosmos venv in {COSMOS_VENV} ...", flush=True)
    shutil.rmtree(COSMOS_VENV, ignore_errors=True)
    subprocess.run([*_uv(), "venv", "--quiet", "--python", sys.executable, str(COSMOS_VENV)], check=True)
    constraints = COSMOS_VENV / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([*_uv(), "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints),
                    *COSMOS_SPEC], check=True)
    marker.write_text(spec)
    return python


def check_cosmos(python: Path) -> None:
    """A given Cosmos venv must hold the versions the goals are stated for."""
    probe = "import airflow, cosmos; print(cosmos.__version__, airflow.__version__)"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    versions = out.stdout.split()
    want = [spec.split("==")[1].rstrip(".*") for spec in COSMOS_SPEC]
    if out.returncode != 0 or len(versions) != 2 or not all(
            v.startswith(w) for v, w in zip(versions, want, strict=True)):
        raise SystemExit(f"{python} has no Cosmos {want[0]}.x with Airflow {want[1]}: "
                         f"{out.stdout}{out.stderr}")
    print(f"cosmos {versions[0]}, airflow {versions[1]} from {python}", flush=True)


def prepare(models: int) -> dict[str, Path]:
    """The manifest, project and the three DAG files for one size (generated once)."""
    dest = OUT / f"n{models}"
    project, manifest = dest / "project", dest / "manifest.json"
    if not manifest.is_file():
        shutil.rmtree(dest, ignore_errors=True)
        generate(dest, models)
    (dest / "profiles").mkdir(exist_ok=True)
    (dest / "profiles" / "profiles.yml").write_text(PROFILES)
    files = {"floor": FLOOR_DAG.format(n=models), "floor_nogc": FLOOR_NOGC_DAG.format(n=models),
             "ours": OURS_DAG.format(project=str(project), manifest=str(manifest)),
             "cosmos": COSMOS_DAG.format(project=str(project), manifest=str(manifest),
                                         profiles=str(dest / "profiles" / "profiles.yml"))}
    paths = {}
    for kind, text in files.items():
        paths[kind] = dest / f"dag_{kind}.py"
        paths[kind].write_text(text)
    return paths


def run_one(python: Path, dag_file: Path, kind: str, models: int) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(AIRFLOW_HOME=str(OUT / "airflow_home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               DLH_DBT_RUNTIME_ROOT=str(OUT / "runtime"), PYTHONDONTWRITEBYTECODE="",
               # ours declares an asset per model: its URIs need the connection's address (docs/assets.md)
               AIRFLOW_CONN_WAREHOUSE=json.dumps({"conn_type": "postgres", "host": "warehouse.example.com",
                                                  "login": "bench", "schema": "warehouse"}))
    proc = subprocess.run([str(python), "-c", CHILD, str(dag_file), kind, str(models),
                           "1" if kind == "ours" else "0"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} ({models} models) failed:\n{proc.stderr[-4000:]}")
    run = Run(**json.loads(proc.stdout.strip().splitlines()[-1]))
    if run.models != models:
        print(f"{kind} rendered {run.models} model tasks, expected {models}", file=sys.stderr)
        raise SystemExit(2)
    return run


def measure(models: int, rounds: int, pythons: dict[str, Path]) -> dict[str, list[Run]]:
    paths = prepare(models)
    for kind in CONTENDERS:  # warm-up, discarded: fills our graph cache and the OS page cache
        run_one(pythons[kind], paths[kind], kind, models)
    runs: dict[str, list[Run]] = {k: [] for k in CONTENDERS}
    for r in range(rounds):
        order = CONTENDERS if r % 2 == 0 else tuple(reversed(CONTENDERS))
        for kind in order:
            runs[kind].append(run_one(pythons[kind], paths[kind], kind, models))
        print(f"  {models} models, round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {runs[k][-1].seconds:.2f}s" for k in CONTENDERS), flush=True)
    return runs


def _med(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def _min(runs: list[Run], attr: str) -> float:
    return float(min(getattr(r, attr) for r in runs))


def _total(runs: list[Run], pick: Callable[[list[float]], float]) -> float:
    return pick([r.seconds + r.ser for r in runs])


def _row(values: Sequence[tuple[str, float, str]]) -> tuple[str, str]:
    """(header, line) with each column as wide as its name."""
    widths = [max(len(name), 7) for name, _, _ in values]
    return (" ".join(f"{name:>{w}}" for (name, _, _), w in zip(values, widths, strict=True)),
            " ".join(f"{v:>{w}{fmt}}" for (_, v, fmt), w in zip(values, widths, strict=True)))


def tables(results: dict[int, dict[str, list[Run]]]) -> list[str]:
    """Wall time (median, then min), CPU time and peak RSS per size; ratios are ours over the others."""
    rounds = len(next(iter(results.values()))["ours"])
    lines: list[str] = []
    for stat, pick in (("median", statistics.median), ("min", min)):
        rows = []
        for n, runs in results.items():
            floor, ours, cosmos = (float(pick([r.seconds for r in runs[k]])) for k in MAIN)
            nogc = float(pick([r.seconds for r in runs["floor_nogc"]]))
            rss = {k: float(pick([r.rss_mb for r in runs[k]])) for k in CONTENDERS}
            rows.append(_row([("models", n, "d"), ("floor s", floor, ".3f"), ("ours s", ours, ".3f"),
                              ("ours+ser s", _total(runs["ours"], pick), ".3f"), ("cosmos s", cosmos, ".3f"),
                              ("ours/floor", ours / floor, ".2f"), ("ours/cosmos", ours / cosmos, ".2f"),
                              ("RSS ours MB", rss["ours"], ".0f"), ("RSS cosmos MB", rss["cosmos"], ".0f"),
                              ("RSS ratio", rss["ours"] / rss["cosmos"], ".2f"),
                              ("floor no-GC s", nogc, ".3f"), ("ours/floor no-GC", ours / nogc, ".2f")]))
        lines += [f"wall time and peak RSS, {stat} of {rounds} rounds", rows[0][0], *(r[1] for r in rows), ""]
    rows = []
    for n, runs in results.items():
        cpu = {k: _med(runs[k], "cpu") for k in CONTENDERS}
        added = {k: statistics.median(r.rss_mb - r.base_mb for r in runs[k]) for k in CONTENDERS}
        rows.append(_row([("models", n, "d"), ("floor cpu s", cpu["floor"], ".3f"),
                          ("ours cpu s", cpu["ours"], ".3f"), ("cosmos cpu s", cpu["cosmos"], ".3f"),
                          ("ours/floor", cpu["ours"] / cpu["floor"], ".2f"),
                          ("ours/cosmos", cpu["ours"] / cpu["cosmos"], ".2f"),
                          ("ser s", _med(runs["ours"], "ser"), ".3f"),
                          ("base MB", _med(runs["ours"], "base_mb"), ".0f"),
                          ("added floor MB", added["floor"], ".0f"), ("added ours MB", added["ours"], ".0f"),
                          ("added cosmos MB", added["cosmos"], ".0f"),
                          ("added ratio", added["ours"] / added["cosmos"], ".2f"),
                          ("ours tasks", runs["ours"][0].tasks, "d"),
                          ("cosmos tasks", runs["cosmos"][0].tasks, "d")]))
    lines += [f"CPU time, serialization of ours, and RSS added by the DAG file (medians of {rounds} rounds)",
              rows[0][0], *(r[1] for r in rows), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 5000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 and 1000 models, 2 rounds")
    parser.add_argument("--cosmos-python", default=os.environ.get("DLH_BENCH_COSMOS_PYTHON"),
                        help="python of an existing venv with Cosmos 1.15 and our Airflow (else built)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = [100, 1000], 2
    cosmos = Path(args.cosmos_python) if args.cosmos_python else cosmos_python()
    check_cosmos(cosmos)
    pythons = {k: Path(sys.executable) for k in ("floor", "floor_nogc", "ours")} | {"cosmos": cosmos}
    started = time.perf_counter()
    results = {n: measure(n, args.rounds, pythons) for n in sorted(args.sizes)}
    print("\n" + "\n".join(tables(results)))
    print(f"bench wall {time.perf_counter() - started:.0f}s")
    n = max(results)
    runs = results[n]
    floor, ours, cosmos = (_med(runs[k], "seconds") for k in MAIN)
    nogc = _med(runs["floor_nogc"], "seconds")
    total = statistics.median(r.seconds + r.ser for r in runs["ours"])
    rss = _med(runs["ours"], "rss_mb") / _med(runs["cosmos"], "rss_mb")
    added = statistics.median(r.rss_mb - r.base_mb for r in runs["ours"]) / statistics.median(
        r.rss_mb - r.base_mb for r in runs["cosmos"])
    cpu = {k: _med(runs[k], "cpu") for k in CONTENDERS}
    ok = ours / floor <= GOAL_VS_FLOOR and ours / cosmos <= GOAL_VS_COSMOS and rss <= GOAL_RSS
    print(f"{'PASS' if ok else 'FAIL'} {n} models (medians of {args.rounds}): ours/floor={ours / floor:.2f} "
          f"(goal <= {GOAL_VS_FLOOR}) ours/cosmos={ours / cosmos:.2f} (goal <= {GOAL_VS_COSMOS:.2f}) "
          f"peak rss ours/cosmos={rss:.2f} (goal <= {GOAL_RSS}) | rss added by the DAG file={added:.2f} "
          f"cpu ours/floor={cpu['ours'] / cpu['floor']:.2f} ours/floor with GC paused={ours / nogc:.2f} "
          f"cpu ours/cosmos={cpu['ours'] / cpu['cosmos']:.2f} "
          f"with serialization ours/floor={total / floor:.2f} ours/cosmos={total / cosmos:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
