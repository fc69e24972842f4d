"""dbt state of the last successful transformation, for `source_status:fresher+` selection.

Each DAG run builds in its own target dir under the state root; on success that dir's artifacts
become `last_success/` (swapped atomically), which the next run passes to dbt as `--state`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dlh_airflow_common.core.retention import Retention, maybe_prune
from dlh_airflow_common.core.runtime import default_runtime_root

ARTIFACTS = ("manifest.json", "run_results.json", "sources.json")


def state_root() -> Path:
    return Path(os.environ.get("SALESFORCE_DBT_STATE_DIR") or default_runtime_root() / "state" / "salesforce")


def run_target(run_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    return state_root() / "runs" / safe


def last_success() -> Path | None:
    path = state_root() / "last_success"
    return path if (path / "sources.json").is_file() and (path / "manifest.json").is_file() else None


def selection(run_id: str) -> dict[str, object]:
    """What the build runs: only what is downstream of fresher sources, or all without state."""
    target = run_target(run_id)
    target.mkdir(parents=True, exist_ok=True)
    # Failed runs' dirs are never promoted: prune them (also when the state dir is not in the runtime root).
    maybe_prune(state_root(), Retention(), kinds=("runs/*",))
    previous = last_success()
    if previous is None:
        return {"target_path": str(target), "select": [], "extra_args": [], "mode": "full build (no state)"}
    return {"target_path": str(target), "select": ["source_status:fresher+"],
            "extra_args": ["--state", str(previous)], "mode": f"fresher sources since {previous}"}


def promote(run_id: str) -> Path:
    """Make this run's artifacts the state of the last success; drop older run dirs."""
    root = state_root()
    target = run_target(run_id)
    staged = root / f".last_success.{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in ARTIFACTS:
        if (target / name).is_file():
            shutil.copyfile(target / name, staged / name)
    old = root / ".last_success.old"
    shutil.rmtree(old, ignore_errors=True)
    if (root / "last_success").exists():
        os.replace(root / "last_success", old)
    os.replace(staged, root / "last_success")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    return root / "last_success"
