"""Cosmos 1.15 Airflow DAGs for bench/per_node.py, parsed only by the stack run from the Cosmos venv.

Described by the JSON file in ``DLH_BENCH_SPEC``; each entry: dag_id, mode (local or watcher), project_dir,
manifest_path, profiles_path and dbt (the executable: the Cosmos venv has no dbt, Cosmos runs ours as a
subprocess). Cosmos defaults otherwise (its sensors' poke_interval included); no retries, so a failing
run ends at once.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from cosmos import DbtDag, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, LoadMode

SPEC = os.environ.get("DLH_BENCH_SPEC")


def _dag(entry: dict[str, Any]) -> DbtDag:
    mode = {"local": ExecutionMode.LOCAL, "watcher": ExecutionMode.WATCHER}[entry["mode"]]
    return DbtDag(
        dag_id=entry["dag_id"],
        project_config=ProjectConfig(dbt_project_path=entry["project_dir"],
                                     manifest_path=entry["manifest_path"]),
        profile_config=ProfileConfig(profile_name="bench", target_name="dev",
                                     profiles_yml_filepath=entry["profiles_path"]),
        execution_config=ExecutionConfig(execution_mode=mode, dbt_executable_path=entry["dbt"]),
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST),
        schedule=None, start_date=datetime(2026, 1, 1), catchup=False, is_paused_upon_creation=False,
        default_args={"retries": 0},
    )


if SPEC:
    for _entry in json.loads(Path(SPEC).read_text()):
        globals()[_entry["dag_id"]] = _dag(_entry)
