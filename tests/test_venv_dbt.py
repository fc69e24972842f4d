"""DbtOperator runs dbt from another virtualenv (``venv_path``, ``dbt_executable``) for real.

The venv holds dbt-core 1.10 while this environment has another minor version: the task log must show
1.10 ran, so the test fails if the operator quietly used the dbt beside this Python.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import _SCRATCH, REPO
from tests.dbt_venv import dbt_venv


@pytest.fixture(scope="module")
def venv() -> Path:
    return dbt_venv()


@pytest.fixture(scope="module")
def venv_dags(ops_project: Path, venv: Path) -> Iterator[Any]:
    from airflow.dag_processing.dagbag import DagBag

    saved = {k: os.environ.get(k) for k in ("DLH_TEST_DBT_VENV", "AIRFLOW_CONN_DUCK_VENV")}
    os.environ["DLH_TEST_DBT_VENV"] = str(venv)
    # Its own warehouse file: DuckDB files are not readable across all DuckDB versions.
    os.environ["AIRFLOW_CONN_DUCK_VENV"] = json.dumps(
        {"conn_type": "duckdb", "host": str(_SCRATCH / "venv.duckdb"), "extra": {"threads": 4}})
    bag = DagBag(str(REPO / "tests" / "dags" / "dbt_venv_dags.py"))
    assert not bag.import_errors, bag.import_errors
    yield bag
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_the_venv_holds_another_dbt_minor_version(venv: Path) -> None:
    import dbt.version

    theirs = subprocess.run([str(venv / "bin" / "python"), "-c", "import dbt.version as v; print(v.__version__)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert theirs.startswith("1.10.")
    assert not dbt.version.__version__.startswith("1.10."), "the test would not tell the two apart"


@pytest.mark.parametrize("dag_id", ["venv_sync_build", "venv_deferred_build", "venv_executable_build"])
def test_operator_runs_the_venvs_dbt(venv_dags: Any, dag_id: str, capfd: pytest.CaptureFixture[str]) -> None:
    with capture_logs() as task_log:
        dr = venv_dags.get_dag(dag_id).test()
    out = capfd.readouterr()
    log = "\n".join(str(e.get("event")) for e in task_log)
    assert dr.state == "success", (log + out.out + out.err)[-4000:]
    assert "Running with dbt=1.10." in log, log
    assert "dbt summary: 10 nodes" in log and "OK model.demo.customer_orders" in log, log


def test_a_venv_that_cannot_be_built_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLH_TEST_VENV_CACHE", str(tmp_path))
    monkeypatch.setenv("UV", str(tmp_path / "no-uv"))
    with pytest.raises(RuntimeError, match=r"Cannot build the test virtualenv.*no-uv"):
        dbt_venv()
    assert not any(p.name.startswith("dbt-") for p in tmp_path.iterdir())


def test_another_venvs_dbt_failure_reads_as_well(venv: Path, demo_project: Path, duck: Any,
                                                 runtime_root: Path) -> None:
    """A foreign dbt CLI reports only JSON events: still the right class, headline and user paths."""
    from dlh_airflow_common.core import DbtCommand, DbtInvoker, DbtProjectException, ProfileConfig
    from dlh_airflow_common.core.runners import SubprocessRunner

    yml = demo_project / "dbt_project.yml"
    yml.write_text(yml.read_text().replace('version: "1.0.0"', "version: 1"))
    inv = DbtInvoker(demo_project, ProfileConfig(connection=duck), runtime_root=runtime_root,
                     runner=SubprocessRunner(venv_path=str(venv)))
    with pytest.raises(DbtProjectException) as err:
        inv.invoke(DbtCommand("build"))
    assert err.value.message.endswith("before running any node: at path ['version']: '1' is not valid "
                                      "under any of the given schemas"), err.value.message
    assert f"Error encountered in {yml}" in str(err.value) and str(runtime_root) not in str(err.value)
