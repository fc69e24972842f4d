"""`make demo-ui`: the demo's DAGs run for real by Airflow, to browse in the UI with their task logs.

`make demo` runs its DAGs with `airflow dags test`, which leaves no task log files the API server can
serve: its runs show in the UI with empty logs. This script starts the four Airflow components (api-server,
scheduler, dag-processor, triggerer; LocalExecutor) on the demo's home (`.demo/airflow`, SQLite; set up
here when `make demo` has not run), triggers `salesforce_extract`, then `salesforce_dbt` (one task per dbt
node: `SALESFORCE_DBT_SHAPE=nodes`, unless set), waits for both, and prints the UI's URL with the login
(user `admin`; the password Airflow's simple auth manager generated into
`.demo/airflow/simple_auth_manager_passwords.json.generated` when the api-server first started). It keeps
running until Ctrl-C, then stops every component.

A run after `make demo` first makes late edits in the offline org (as `make demo`'s third run does), so
the dbt DAG has new data to build instead of short-circuiting. Every wait is bounded and says what it
waited for. Port: `DEMO_UI_PORT` (default 8080).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # tests.airflow_stack: the components, as the scheduler smoke test runs them
sys.path.insert(0, str(HERE))

from salesforce_demo import DAGS, WORK, environment  # noqa: E402
from tests.airflow_stack import AirflowStack  # noqa: E402

USER = "admin"  # SimpleAuthManager's default user ([core] simple_auth_manager_users = admin:admin)
DEMO_DAGS = ("salesforce_extract", "salesforce_dbt")


class DemoError(Exception):
    """A step did not finish in time or failed; the message says which and where to look."""


def password_file(home: Path) -> Path:
    """Where SimpleAuthManager writes the passwords it generates (unless
    ``[core] simple_auth_manager_passwords_file`` names another file)."""
    return home / "simple_auth_manager_passwords.json.generated"


def stack_env(home: Path, port: int, base: dict[str, str]) -> dict[str, str]:
    """``base`` (the DAGs' own settings) plus what a local scheduler-run stack needs."""
    env = dict(base)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        # Shared by the components of this launch (a new launch logs the browser out).
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        # Only the runs triggered here (and from the UI), none from the DAGs' cron schedules.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        # A task's slot is released up to this long after it ends (see docs/operations.md): 1 s, not 5.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The task logs carry dbt's progress lines at INFO (`make demo` quiets Airflow to WARNING).
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    })
    return env


def wait(what: str, predicate: Callable[[], Any], stack: AirflowStack, timeout: float,
         interval: float = 1.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if stack.dead():
            raise DemoError(f"an Airflow component died while waiting for {what}\n{stack.report()}")
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}\n{stack.report()}")


def request(port: int, method: str, path: str, body: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """One HTTP request to the local api-server (plain http on 127.0.0.1: nothing else is ever opened)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Api:
    """The public REST API as the UI's user (a JWT from /auth/token, fetched per call)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.port, self.user, self.password = port, user, password
        self.base = f"http://127.0.0.1:{port}"

    def token(self) -> str:
        status, body = request(self.port, "POST", "/auth/token",
                               {"username": self.user, "password": self.password}, timeout=30)
        if status not in (200, 201):
            raise DemoError(f"logging in as {self.user} failed: HTTP {status} {body[:300]!r}")
        return str(json.loads(body)["access_token"])

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, data = request(self.port, method, path, body, {"Authorization": f"Bearer {self.token()}"})
        if status >= 300:
            raise DemoError(f"{method} {path}: HTTP {status} {data[:500]!r}")
        return json.loads(data)


def healthy(port: int) -> bool:
    try:
        return request(port, "GET", "/api/v2/monitor/health", timeout=2)[0] == 200
    except OSError:
        return False


def start(stack: AirflowStack, port: int, timeout: float = 180) -> Api:
    """Migrate, start the four components, wait for the api-server, and log in as the generated admin."""
    print("migrating the metadata DB ...", flush=True)
    try:
        migrate = stack.cli("db", "migrate", timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"airflow db migrate did not finish within {exc.timeout:.0f}s") from exc
    if migrate.returncode != 0:
        raise DemoError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}")
    print(f"starting api-server, scheduler, dag-processor, triggerer (logs: {stack.logs}) ...", flush=True)
    stack.start("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
    stack.start("scheduler", "--skip-serve-logs")
    stack.start("dag-processor")
    stack.start("triggerer", "--skip-serve-logs")
    wait(f"the api-server to answer on port {port}", lambda: healthy(port), stack, timeout)
    passwords = password_file(stack.home)
    # The api-server writes the file as it starts up, before it answers: this wait is a safety net.
    wait(f"the api-server to write {passwords}",
         lambda: passwords.is_file() and USER in json.loads(passwords.read_text() or "{}"), stack, 30)
    return Api(port, USER, json.loads(passwords.read_text())[USER])


def wait_parsed(api: Api, stack: AirflowStack, dag_ids: tuple[str, ...], timeout: float = 180) -> None:
    def parsed() -> bool:
        errors = api("GET", "/api/v2/importErrors")["import_errors"]
        if errors:
            raise DemoError("DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}"
                                                               for e in errors))
        known = {d["dag_id"] for d in api("GET", "/api/v2/dags?limit=100")["dags"]}
        return set(dag_ids) <= known

    wait(f"the dag-processor to parse {', '.join(dag_ids)}", parsed, stack, timeout, interval=2)


def run_dag(api: Api, stack: AirflowStack, dag_id: str, timeout: float) -> tuple[str, str, float]:
    """Unpause and trigger ``dag_id``, wait for the run to end; returns (run id, state, seconds)."""
    started = time.monotonic()
    api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run_id = api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]

    def ended() -> str | None:
        state = str(api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])
        return state if state in ("success", "failed") else None

    state = wait(f"the {dag_id} run {run_id} to end", ended, stack, timeout, interval=2)
    return run_id, str(state), time.monotonic() - started


def task_states(api: Api, dag_id: str, run_id: str) -> dict[str, str]:
    rows = api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500")["task_instances"]
    return {r["task_id"]: str(r["state"]) for r in rows}


def prepare_demo_home(env: dict[str, str]) -> None:
    """The demo's org, fresh or with late edits (so the dbt DAG has something new to build)."""
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    sys.path.insert(0, str(DAGS))
    from salesforce_lib.generator import FakeOrg

    org_file = WORK / "org.json"
    org = FakeOrg(org_file)
    if org_file.exists():
        edited = org.late_edits(5)
        print(f"late edits of {len(edited)} old opportunities in {org_file}: the dbt run rebuilds them")
    else:
        org.populate()
        print(f"generated an offline Salesforce org in {org_file}")
    org.save()


def serve_until_interrupted(stack: AirflowStack) -> None:
    stop = {"now": False}

    def interrupted(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    while not stop["now"]:
        if dead := stack.dead():
            print(f"an Airflow component stopped: {', '.join(dead)}; logs in {stack.logs}", file=sys.stderr)
            return
        time.sleep(1)


def main() -> int:
    began = time.monotonic()
    home = WORK / "airflow"
    if not home.exists():
        print(f"{WORK} has no demo yet: setting one up (`make demo` would fill it with three runs first)")
    WORK.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    base_env = environment()
    base_env.setdefault("SALESFORCE_DBT_SHAPE", os.environ.get("SALESFORCE_DBT_SHAPE", "nodes"))
    port = int(os.environ.get("DEMO_UI_PORT", "8080"))
    env = stack_env(home, port, base_env)
    prepare_demo_home(env)
    stack = AirflowStack(home, env, port)
    try:
        api = start(stack, port)
        wait_parsed(api, stack, DEMO_DAGS)
        for dag_id in DEMO_DAGS:
            print(f"running {dag_id} under the scheduler ...", flush=True)
            run_id, state, took = run_dag(api, stack, dag_id, timeout=600)
            states = task_states(api, dag_id, run_id)
            counts: dict[str, int] = {}
            for s in states.values():
                counts[s] = counts.get(s, 0) + 1
            print(f"  {dag_id} {run_id}: {state} in {took:.0f}s ("
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
            if state != "success":
                raise DemoError(f"{dag_id} ended {state}: see its task logs in the UI\n{stack.report()}")
        print(f"""
Airflow UI: {api.base}   (ready after {time.monotonic() - began:.0f}s)
  username: {api.user}
  password: {api.password}
  (generated by Airflow's simple auth manager, kept in {password_file(home)})

  DAGs > salesforce_dbt > the latest run > a task such as dbt_build.model.fct_salesforce__opportunities:
  its Logs tab shows dbt's progress lines ("OK model...", "dbt summary: ..."); its Details tab has the
  "dbt Docs" link to the model's page in the dbt Docs (also in the UI's navigation). The runs of `make demo`
  (airflow dags test) are listed too, without logs.

Ctrl-C stops every component.""", flush=True)
        serve_until_interrupted(stack)
        return 0
    except DemoError as exc:
        print(f"demo-ui failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the api-server stopped answering mid-way
        print(f"demo-ui failed: the api-server did not answer ({exc})\n{stack.report()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        print("stopping the Airflow components ...", flush=True)
        left = stack.stop()
        print("stopped." if not left else f"processes still alive: {left}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
