"""A separate virtualenv holding another dbt-core minor version, built once and cached across runs.

The tests of ``venv_path``/``dbt_executable`` need a dbt that is not the one beside this Python. It
is built with uv (as ``make install`` bootstraps it) into the user's cache dir, keyed by what it holds,
so a fresh clone on a known machine reuses it and a fresh machine pays one install (~30 s).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.adapter_plugins.venv import _uv

DBT_110 = ("dbt-core~=1.10.0", "dbt-duckdb~=1.10.0")
CACHE_ENV = "DLH_TEST_VENV_CACHE"
_DONE = ".dlh-complete"


def cache_root() -> Path:
    """``$DLH_TEST_VENV_CACHE``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, under our own folder."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dlh_airflow_common" / "test-venvs"


def dbt_venv(requirements: tuple[str, ...] = DBT_110) -> Path:
    """The path of a virtualenv with ``requirements`` installed; built on first use, then reused."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(repr((requirements, python, sys.base_prefix)).encode()).hexdigest()[:12]
    venv = cache_root() / f"dbt-{key}"
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"Cannot create the test virtualenv cache {venv.parent}: {exc}; "
                           f"set {CACHE_ENV} to a writable directory") from exc
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions build it once
        if (venv / _DONE).is_file() and (venv / "bin" / "python").resolve().is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted session
        uv = _uv()  # the uv that runs us (`uv run` sets UV), not whatever python3 is on PATH
        steps = [[*uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                 [*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                  *requirements]]
        for step in steps:
            try:
                proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeError(_cannot_build(step, str(exc))) from exc
            if proc.returncode != 0:
                raise RuntimeError(_cannot_build(step, proc.stdout + proc.stderr))
        (venv / _DONE).write_text(" ".join(requirements) + "\n")
    return venv


def _cannot_build(step: list[str], output: str) -> str:
    return (f"Cannot build the test virtualenv with a second dbt version: `{' '.join(step)}` failed "
            f"(needs `python3 -m uv`, which `make install` provides, and access to PyPI; set "
            f"{CACHE_ENV} to reuse a cache dir elsewhere):\n{output[-3000:]}")
