"""The detached supervisor of deferrable runs, run for real: it never imports Airflow."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core import ConnectionInfo, DbtCommand, ProfileConfig, RunIdentity, resolve_profile
from dlh_airflow_common.core.detached import TERMINAL, ControlDir
from dlh_airflow_common.core.exceptions import DbtException, DbtProjectException, exception_from_dict
from dlh_airflow_common.operators.deferral import DetachedRun

# Dumps the modules a Python process ended with, to $DLH_TEST_MODULES_OUT.<pid>.
_SITECUSTOMIZE = '''
import atexit, os, sys

def _dump():
    with open(os.environ["DLH_TEST_MODULES_OUT"] + "." + str(os.getpid()), "w") as fh:
        fh.write("\\n".join(sorted(sys.modules)))

if os.environ.get("DLH_TEST_MODULES_OUT"):
    atexit.register(_dump)
'''


def _airflow_modules(dump: Path) -> list[str]:
    return [m for m in dump.read_text().splitlines() if m == "airflow" or m.startswith("airflow.")]


def test_supervisor_runs_dbt_without_importing_airflow(demo_project: Path, runtime_root: Path,
                                                       duck: ConnectionInfo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    out = tmp_path / "modules"
    # What an Airflow 3 task process hands down: a metadata-DB URL that breaks any Airflow import.
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    monkeypatch.delenv("_AIRFLOW__REEXECUTED_PROCESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("DLH_TEST_MODULES_OUT", str(out))

    # The dump sees Airflow when a process imports it (the operator layer's error module), and in
    # this environment that import fails, as it did for the supervisor before it avoided Airflow.
    probe = subprocess.run([sys.executable, "-c", "import dlh_airflow_common.airflow_errors"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert probe.returncode != 0 and "Could not parse SQLAlchemy URL" in probe.stderr, probe.stderr
    (probe_dump,) = tmp_path.glob("modules.*")
    assert "airflow.sdk.exceptions" in _airflow_modules(probe_dump)
    probe_dump.unlink()

    profile = resolve_profile(ProfileConfig(connection=duck), demo_project)
    ctl = DetachedRun(project_dir=str(demo_project), runtime_root=runtime_root, command=DbtCommand("deps"),
                      identity=RunIdentity("dag", "task", 1), profile=profile, env_vars={}).launch()
    deadline = time.monotonic() + 180
    while (status := ctl.read_status() or {}).get("state") not in TERMINAL:
        assert time.monotonic() < deadline, ctl.progress_tail()
        time.sleep(0.2)
    assert status["state"] == "success", ctl.progress_tail()
    dump = Path(f"{out}.{status['pid']}")
    while not dump.exists():  # written at exit, just after the final status
        assert time.monotonic() < deadline, ctl.progress_tail()
        time.sleep(0.1)
    modules = dump.read_text().splitlines()
    assert "dlh_airflow_common.core.detached" not in modules  # it ran as __main__ ...
    assert "dlh_airflow_common.core.invoke" in modules  # ... and ran dbt through the core
    assert _airflow_modules(dump) == []
    assert ControlDir(ctl.path).spec.is_file()


def test_core_errors_reach_airflow_as_airflow_exceptions(tmp_path: Path) -> None:
    """Plain in the core; the same objects, also AirflowExceptions, once they leave the hook/operator."""
    from airflow.sdk.exceptions import AirflowException

    from dlh_airflow_common.hooks.dbt import DbtHook

    assert not issubclass(DbtException, AirflowException)
    with pytest.raises(DbtProjectException) as raised:
        DbtHook(str(tmp_path / "missing"), profiles_dir=str(tmp_path)).run_dbt_task("build")
    exc = raised.value
    assert isinstance(exc, AirflowException) and isinstance(exc, DbtException)
    assert type(exc).__name__ == "DbtProjectException" and "does not exist" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert isinstance(again, DbtProjectException) and isinstance(again, AirflowException)
    assert str(again) == str(exc)
    assert type(exception_from_dict(exc.to_dict())) is DbtProjectException  # the core's own class
    assert os.environ.get("_AIRFLOW__REEXECUTED_PROCESS") is None
