"""`make demo`: the Salesforce reference pipeline end to end through real Airflow (`airflow dags test`).

1. an offline Salesforce org is generated (dirty values included) and extracted into raw_salesforce;
2. the dbt DAG builds staging / intermediate / marts / history and reports tests by severity;
3. a second run with no new data short-circuits;
4. late edits of old opportunities arrive: only the opportunity lineage is rebuilt.

DuckDB by default (no server). For PostgreSQL set one variable:
    DEMO_WAREHOUSE_URI='postgres://user:pass@host:5432/warehouse' make demo
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "pipelines" / "salesforce" / "dags"
WORK = REPO / ".demo"
BIN = Path(sys.executable).parent


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(WORK / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "DLH_DBT_RUNTIME_ROOT": str(WORK / "dbt-runtime"),
        "SALESFORCE_SOURCE": "generator",
        "SALESFORCE_GENERATOR_STATE": str(WORK / "org.json"),
        "PYTHONPATH": str(DAGS),
    })
    uri = os.environ.get("DEMO_WAREHOUSE_URI")
    env["AIRFLOW_CONN_WAREHOUSE"] = uri or json.dumps(
        {"conn_type": "duckdb", "host": str(WORK / "warehouse.duckdb")})
    return env


def airflow(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-5000:] + out.stderr[-5000:])
        raise SystemExit(f"airflow {' '.join(args)} failed")
    return out.stdout


def airflow_json(*args: str, env: dict[str, str]) -> Any:
    """An `airflow ... -o json` result; Airflow may print warnings on stdout before it."""
    out = airflow(*args, "-o", "json", env=env)
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith(("[", "{")))
    return json.loads(line)


def latest_run(dag_id: str, env: dict[str, str]) -> str:
    runs = airflow_json("dags", "list-runs", dag_id, env=env)
    return str(max(runs, key=lambda r: r.get("start_date") or r.get("logical_date") or "")["run_id"])


def task_states(dag_id: str, env: dict[str, str]) -> dict[str, str]:
    rows = airflow_json("tasks", "states-for-dag-run", dag_id, latest_run(dag_id, env), env=env)
    return {r["task_id"]: r["state"] for r in rows}


def asset_events(dag_id: str, run_id: str) -> list[str]:
    """The tables a run emitted asset events for (what the UI's Assets view shows), by table name."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(AssetEvent.source_dag_id == dag_id,
                                                AssetEvent.source_run_id == run_id).all()
        return sorted(str(r.asset.uri).rsplit("/", 1)[-1] for r in rows)


def run_pipeline(label: str, env: dict[str, str]) -> dict[str, str]:
    print(f"\n=== {label} ===")
    for dag_id in ("salesforce_extract", "salesforce_dbt"):
        started = time.monotonic()
        airflow("dags", "test", dag_id, env=env)
        states = task_states(dag_id, env)
        print(f"  {dag_id}: {time.monotonic() - started:.1f}s  "
              + ", ".join(f"{t}={s}" for t, s in sorted(states.items())))
        events = asset_events(dag_id, latest_run(dag_id, env))
        print(f"    asset events: {len(events)}" + (f" ({', '.join(events)})" if events else ""))
    return task_states("salesforce_dbt", env)


def warehouse_rows(sql: str, env: dict[str, str]) -> list[tuple[Any, ...]]:
    sys.path.insert(0, str(DAGS))
    os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")})
    from airflow.sdk import BaseHook
    from salesforce_lib.store import DuckDbStore, store_for_connection

    store = store_for_connection(BaseHook.get_connection("warehouse"))
    if isinstance(store, DuckDbStore):
        import duckdb

        con = duckdb.connect(store.path, read_only=True)
        try:
            return list(con.sql(sql).fetchall())
        finally:
            con.close()
    with store.connect() as con:
        cur = con.cursor()
        cur.execute(sql)
        return list(cur.fetchall())


def report(env: dict[str, str]) -> None:
    from salesforce_lib.state import last_success

    print("  marts:")
    for table in ("dim_salesforce__accounts", "dim_salesforce__contacts", "fct_salesforce__opportunities",
                  "fct_salesforce__opportunity_history"):
        (count,) = warehouse_rows(f"select count(*) from marts.{table}", env)[0]
        print(f"    {table:<40} {count:>6} rows")
    print("  pipeline by stage (open opportunities):")
    rows = warehouse_rows("select stage_name, sum(opportunity_count), sum(total_amount) from "
                          "marts.mart_salesforce__pipeline_by_stage_owner group by 1 order by 3 desc", env)
    for stage, n, amount in rows:
        print(f"    {stage!s:<24} {int(n):>4} deals  {float(amount or 0):>14,.2f}")
    monitor = "marts.monitor_salesforce__volume_distribution"
    (monitor_rows,) = warehouse_rows(f"select count(*) from {monitor}", env)[0]
    print(f"  info monitors recorded so far: {monitor_rows} rows in {monitor}")
    state = last_success()
    if state is None:
        return
    manifest = json.loads((state / "manifest.json").read_text())
    results = json.loads((state / "run_results.json").read_text())["results"]
    by_severity: dict[str, dict[str, int]] = {}
    for r in results:
        node = manifest["nodes"].get(r["unique_id"], {})
        if node.get("resource_type") != "test":
            continue
        severity = str(node.get("config", {}).get("severity", "error")).lower()
        bucket = by_severity.setdefault(severity, {})
        bucket[r["status"]] = bucket.get(r["status"], 0) + 1
    parts = [f"{sev}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
             for sev, c in sorted(by_severity.items())]
    print("  data tests by severity: " + "; ".join(parts))


def rebuilt_nodes() -> list[str]:
    from salesforce_lib.state import last_success

    state = last_success()
    if state is None:
        return []
    results = json.loads((state / "run_results.json").read_text())["results"]
    return sorted(r["unique_id"] for r in results if r["unique_id"].startswith("model."))


def docs_published(states: dict[str, str]) -> bool:
    """The last run's `docs generate` published the site the API server's "dbt Docs" menu serves."""
    from dlh_airflow_common.docs import DocsSite

    site = DocsSite()  # <runtime root>/docs, as the DAG's DbtOperator published it
    projects = site.projects()
    print(f"\ndbt docs: {states.get('dbt_docs_generate')}; published under {site.location}: "
          f"{', '.join(projects) or 'NOTHING (unexpected)'}")
    print("  to browse them: AIRFLOW_HOME=.demo/airflow DLH_DBT_RUNTIME_ROOT=.demo/dbt-runtime "
          "python3 -m uv run --frozen airflow api-server, log in as admin (password in "
          ".demo/airflow/simple_auth_manager_passwords.json.generated once it started), then the "
          "'dbt Docs' menu entry;\n  or `make demo-ui` to run the DAGs under a scheduler and browse "
          "their task logs")
    return states.get("dbt_docs_generate") == "success" and bool(projects)


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    env = environment()
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    sys.path.insert(0, str(DAGS))
    from salesforce_lib.generator import FakeOrg

    airflow("db", "migrate", env=env)
    org = FakeOrg(WORK / "org.json")
    org.populate()
    org.save()
    print(f"generated an offline Salesforce org in {WORK / 'org.json'}")

    run_pipeline("run 1: initial load and full build", env)
    report(env)

    states = run_pipeline("run 2: no new data", env)
    skipped = [t for t, s in states.items() if s == "skipped"]
    print(f"  short-circuited: {', '.join(sorted(skipped)) or 'NOTHING (unexpected)'}")

    org = FakeOrg(WORK / "org.json")
    edited = org.late_edits(5)
    org.save()
    print(f"\nlate edits of {len(edited)} old opportunities: {', '.join(edited)}")
    states = run_pipeline("run 3: late edits", env)
    print("  models rebuilt: " + ", ".join(n.split(".")[-1] for n in rebuilt_nodes()))
    report(env)
    published = docs_published(states)
    uri = os.environ.get("DEMO_WAREHOUSE_URI")
    where = re.sub(r"//[^@/]*@", "//***@", uri) if uri else str(WORK / "warehouse.duckdb")  # no password
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; warehouse: {where}")
    ok = bool(skipped) and published
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
