"""Benchmark ``dbt parse`` cold vs warm through DbtInvoker, against bare dbt for reference.

Run by hand: ``.venv/bin/python bench/partial_parse.py [--repeat N] [--models N] [--max-ratio R]``.
Exits 1 when the library's warm/cold ratio of ``load_all_elapsed`` exceeds ``--max-ratio``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from genproject import generate_project, write_profiles

from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig

DBT = str(Path(sys.executable).parent / "dbt")
UNABLE = "Unable to do partial parsing"
# The settings the library's runner gives every dbt process, so bare dbt is timed on equal terms.
BARE_ENV = {
    "DBT_LOG_FORMAT": "json",
    "DBT_LOG_FORMAT_FILE": "text",
    "DBT_USE_COLORS": "false",
    "DBT_USE_COLORS_FILE": "false",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}


@dataclass(frozen=True)
class Sample:
    """One ``dbt parse``: dbt's own parse time, wall time, and whether it parsed partially."""

    load_all: float
    wall: float
    partial: bool
    reason: str | None = None


def read_sample(target_dir: Path, log_dir: Path, wall: float) -> Sample:
    """Read perf_info.json and dbt.log of one run."""
    perf = json.loads((target_dir / "perf_info.json").read_text())
    log_file = log_dir / "dbt.log"
    lines = log_file.read_text().splitlines() if log_file.is_file() else []
    reason = next((line.split(": ", 1)[-1] for line in lines if UNABLE in line), None)
    partial = reason is None and perf["parsed_path_count"] < perf["path_count"]
    return Sample(perf["load_all_elapsed"], wall, partial, reason)


def timed(run: Callable[[], Path]) -> tuple[Path, float]:
    """Call ``run`` (which returns the run's target dir) and time it."""
    start = time.perf_counter()
    target_dir = run()
    return target_dir, time.perf_counter() - start


def library_round(project: Path, conn: ConnectionInfo, runtime_root: Path) -> tuple[Sample, Sample]:
    """A cold parse on a fresh runtime root, then a warm one seeded from the library's cache."""
    invoker = DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=runtime_root,
                         keep_target_artifacts=True)

    def parse() -> Path:
        result = invoker.invoke(DbtCommand("parse"))
        assert result.target_dir is not None
        return result.target_dir

    samples = []
    for _ in range(2):
        target_dir, wall = timed(parse)
        samples.append(read_sample(target_dir, target_dir.parent / "logs", wall))
    return samples[0], samples[1]


def bare_round(project: Path, profiles_dir: Path) -> tuple[Sample, Sample]:
    """Bare dbt in a project copy: cold after deleting target/, then warm."""
    env = {**os.environ, **BARE_ENV}
    argv = [DBT, "parse", "--project-dir", str(project), "--profiles-dir", str(profiles_dir)]

    def parse() -> Path:
        shutil.rmtree(project / "logs", ignore_errors=True)  # dbt appends: keep one run per log
        subprocess.run(argv, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
        return project / "target"

    shutil.rmtree(project / "target", ignore_errors=True)
    samples = []
    for _ in range(2):
        target_dir, wall = timed(parse)
        samples.append(read_sample(target_dir, project / "logs", wall))
    return samples[0], samples[1]


def median(samples: Sequence[Sample], attr: str) -> float:
    """Median of one Sample field."""
    return float(statistics.median(getattr(s, attr) for s in samples))


def report(results: dict[str, list[Sample]], max_ratio: float) -> bool:
    """Print the table and ratios; return whether the warm/cold goal is met."""
    print(f"\n{'run (median)':<14}{'load_all_elapsed':>18}{'(max)':>9}{'wall':>10}{'partial parse':>16}")
    for name, samples in results.items():
        used = sum(s.partial for s in samples)
        worst = max(s.load_all for s in samples)
        print(f"{name:<14}{median(samples, 'load_all'):>17.3f}s{worst:>8.3f}s{median(samples, 'wall'):>9.3f}s"
              f"{f'{used}/{len(samples)}':>16}")
    lib_cold, lib_warm = results["library cold"], results["library warm"]
    ratio = median(lib_warm, "load_all") / median(lib_cold, "load_all")
    wall_ratio = median(lib_warm, "wall") / median(lib_cold, "wall")
    print(f"\nlibrary warm/cold: load_all {ratio:.3f} (goal <= {max_ratio}), wall {wall_ratio:.3f}")
    for phase in ("cold", "warm"):
        lib, bare = results[f"library {phase}"], results[f"bare {phase}"]
        print(f"library/bare {phase}: load_all {median(lib, 'load_all') / median(bare, 'load_all'):.3f}, "
              f"wall {median(lib, 'wall') / median(bare, 'wall'):.3f}")
    for name in ("library warm", "bare warm"):
        reasons = {s.reason for s in results[name] if not s.partial}
        if reasons:
            print(f"{name}: partial parsing NOT used: {'; '.join(map(str, reasons))}")
    ok = ratio <= max_ratio
    print(f"\n{'PASS' if ok else 'FAIL'}: library warm/cold load_all ratio {ratio:.3f}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="cold+warm rounds per variant (default 3)")
    parser.add_argument("--models", type=int, default=500, help="models in the project (default 500)")
    parser.add_argument("--max-ratio", type=float, default=0.25, help="warm/cold goal (default 0.25)")
    args = parser.parse_args(argv)
    logging.getLogger("dlh_airflow_common").setLevel(logging.WARNING)  # per-run INFO lines are noise here

    started = time.perf_counter()
    results: dict[str, list[Sample]] = {k: [] for k in
                                        ("library cold", "library warm", "bare cold", "bare warm")}
    with tempfile.TemporaryDirectory(prefix="dlh_bench_") as tmp:
        base = Path(tmp)
        project = generate_project(base / "project", models=args.models)
        bare_project = shutil.copytree(project, base / "bare_project")
        profiles_dir = write_profiles(base / "profiles", base / "bare.duckdb")
        conn = ConnectionInfo("bench", "duckdb", host=str(base / "bench.duckdb"))
        for i in range(args.repeat):
            rounds = {"library": library_round(project, conn, base / f"runtime_{i}"),
                      "bare": bare_round(bare_project, profiles_dir)}
            for variant, (cold, warm) in rounds.items():
                results[f"{variant} cold"].append(cold)
                results[f"{variant} warm"].append(warm)
            print(f"round {i + 1}/{args.repeat} (load_all cold/warm): " + ", ".join(
                f"{v} {c.load_all:.2f}s/{w.load_all:.2f}s" for v, (c, w) in rounds.items()), file=sys.stderr)
    ok = report(results, args.max_ratio)
    print(f"total runtime {time.perf_counter() - started:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
