"""`make demo`: run the demo dbt project through DbtHook on DuckDB and print the run summary.

The project is copied nowhere and written to never: dbt works in an isolated runtime under .demo/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".demo"
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir()
os.environ.setdefault("AIRFLOW_HOME", str(WORK / "airflow"))
os.environ["DLH_DBT_RUNTIME_ROOT"] = str(WORK / "dbt-runtime")
os.environ["AIRFLOW_CONN_DEMO_DUCKDB"] = json.dumps(
    {"conn_type": "duckdb", "host": str(WORK / "demo.duckdb"), "extra": {"threads": 4}}
)

from dlh_airflow_common.core import DbtException  # noqa: E402
from dlh_airflow_common.hooks.dbt import DbtHook  # noqa: E402


def main() -> int:
    started = time.monotonic()
    hook = DbtHook(HERE / "demo_project", conn_id="demo_duckdb", progress=lambda line: print("  " + line))
    try:
        for command in ("deps", "build", "source freshness"):
            print(f"$ dbt {command}")
            result = hook.run_dbt_task(command)
            print("\n".join("  " + line for line in result.summary.lines()))
    except DbtException as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"demo finished in {time.monotonic() - started:.1f}s; warehouse at {WORK / 'demo.duckdb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
