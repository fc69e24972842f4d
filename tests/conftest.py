"""Test environment: Airflow home and DAGs folder are set before anything imports Airflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_SCRATCH = Path(tempfile.mkdtemp(prefix="dlh-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SCRATCH / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "tests" / "dags")
sys.path.insert(0, str(REPO / "tests" / "dags"))  # as Airflow does for a DAGs folder
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["DLH_DBT_RUNTIME_ROOT"] = str(_SCRATCH / "dbt-runtime")
os.environ["DLH_DBT_SHARED_RUNTIME_ROOT"] = "true"  # one host: the triggerer sees the runtime root
os.environ["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
# The rendering DAG file renders six variants of a project on its first (cold-cache) import.
os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "600"


def _ops_project() -> Path:
    """The project the DAGs in tests/dags run: the demo plus test-only models behind vars."""
    root = _SCRATCH / "ops"
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(REPO / "examples" / name, root / name)
    models = root / "demo_project" / "models" / "test_only"
    models.mkdir()
    (models / "boom.sql").write_text(
        "{{ config(enabled=var('boom', false)) }}\nselect * from table_that_does_not_exist\n")
    # Fails until the file named by DLH_FLAKY_CSV exists (the retry callback creates it).
    (models / "flaky.sql").write_text(
        "{{ config(enabled=var('flaky', false)) }}\n"
        "select c.customer_id, f.x from {{ ref('stg_customers') }} c\n"
        "cross join read_csv('{{ env_var(\"DLH_FLAKY_CSV\", \"/nonexistent.csv\") }}') f\n")
    (models / "flaky_child.sql").write_text(
        "{{ config(enabled=var('flaky', false)) }}\nselect count(*) as n from {{ ref('flaky') }}\n")
    return root / "demo_project"


os.environ["DLH_TEST_PROJECT_DIR"] = str(_ops_project())


def _render_setup() -> None:
    """The rendering tests' generated project and its DuckDB connection."""
    from tests.render_project import load_external, make_render_project

    project = make_render_project(_SCRATCH / "render" / "gen")
    load_external(_SCRATCH / "render.duckdb")
    os.environ["DLH_RENDER_PROJECT_DIR"] = str(project)
    os.environ["AIRFLOW_CONN_RENDER_DUCK"] = (
        '{"conn_type": "duckdb", "host": "%s", "extra": {"threads": 4}}' % (_SCRATCH / "render.duckdb"))


_render_setup()

import pytest  # noqa: E402

from dlh_airflow_common.core import ConnectionInfo  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from tests.s3server import BUCKET, S3Server, install_connection  # noqa: E402
from tests.warmth import DbtStart  # noqa: E402

EXAMPLES = REPO / "examples"
CANARY = "Canary-Pw-5f1e9c2d7b"


@pytest.fixture(scope="session", autouse=True)
def _scratch() -> Iterator[Path]:
    yield _SCRATCH
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh metadata DB once per session; dag.test() runs many times against it."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def ops_project(airflow_db: None) -> Path:
    """The DAG tests' project with its packages installed once."""
    from dlh_airflow_common.core import DbtCommand, DbtInvoker, ProfileConfig

    project = Path(os.environ["DLH_TEST_PROJECT_DIR"])
    conn = ConnectionInfo("deps", "duckdb", host=str(_SCRATCH / "deps.duckdb"))
    DbtInvoker(project, ProfileConfig(connection=conn)).invoke(DbtCommand("deps"))
    return project


@pytest.fixture
def demo_project(tmp_path: Path) -> Path:
    """A private copy of the demo project with its sibling local package."""
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, tmp_path / name)
    return tmp_path / "demo_project"


@pytest.fixture
def runtime_root(tmp_path: Path) -> Path:
    root = tmp_path / "runtime"
    root.mkdir()
    return root


@pytest.fixture
def duck(tmp_path: Path) -> ConnectionInfo:
    return ConnectionInfo("duck", "duckdb", host=str(tmp_path / "warehouse.duckdb"), extra={"threads": 4})


@pytest.fixture(params=["cold", "warm"])
def dbt_start(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DbtStart]:
    """Both ways dbt starts, each with a private warm dir: no test runs warm by a leftover server."""
    start = DbtStart(request.param, tmp_path / "warm-home", monkeypatch)
    yield start
    start.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = PgServer().init().start()
    server.execute(f"create role dbt_user login password '{CANARY}'")
    server.execute("create database warehouse owner dbt_user")
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 endpoint on loopback (moto's server), the aws connection ``dlh_s3`` to it, a bucket."""
    server = S3Server().start()
    server.create_bucket(BUCKET)
    install_connection(server)
    yield server
    server.stop()


@pytest.fixture
def pg_conn(pg: PgServer, request: pytest.FixtureRequest) -> ConnectionInfo:
    """A connection to the warehouse with the canary password, one schema per test."""
    schema = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return ConnectionInfo("pg_wh", "postgres", host="127.0.0.1", port=pg.port, login="dbt_user",
                          password=CANARY, schema="warehouse", extra={"schema": schema, "threads": 4})


def run_in_mount_namespace(script: str, tmp_path: Path, *args: object) -> dict[str, Any]:
    """Run ``script`` (as root, e.g. to bind-mount read-only) in a private mount namespace.

    It gets ``args`` then a report path, and must write its findings there as JSON; they are returned.
    """
    path, report = tmp_path / "mount_ns_script.py", tmp_path / "mount_ns_report.json"
    path.write_text(script)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(path), *map(str, args),
         str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def add_model(project: Path, name: str, sql: str, folder: str = "marts") -> None:
    (project / "models" / folder / f"{name}.sql").write_text(sql)


def needs_airflow(version: str) -> pytest.MarkDecorator:
    """Skip a test of a feature that needs a newer Airflow, naming both versions (see ``make test-compat``)."""
    from airflow import __version__ as installed

    from dlh_airflow_common._compat import airflow_at_least

    return pytest.mark.skipif(not airflow_at_least(version),
                              reason=f"needs Airflow {version} or newer; this environment has Airflow {installed}")
