"""The throwaway venv holding every dbt plugin, built once per requirements.txt and kept in the cache.

The plugins do not belong in the project's environment (they pull in cloud SDKs), so they live in a venv
of their own, named after the hash of the pinned requirements: a changed pin builds a new one, an
unchanged one is reused by every later test run and CI run on the machine (``make plugin-venv`` builds
it ahead). A lock file lets parallel test processes share one build.

Run as ``python -m tests.adapter_plugins.venv`` to build it and print its path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"


class PluginVenvUnavailable(RuntimeError):
    """The plugins could not be installed here; the message is uv's own error."""


def _uv() -> list[str]:
    found = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to itself
    return [found] if found else [sys.executable, "-m", "uv"]


def cache_root() -> Path:
    explicit = os.environ.get("DLH_PLUGIN_VENV_ROOT")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlh-airflow-common"


def venv_path() -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return cache_root() / f"dbt-plugins-py{sys.version_info.major}{sys.version_info.minor}-{digest}"


def ensure_venv() -> Path:
    """The plugins venv's python, building the venv first if this requirements.txt has none yet."""
    venv = venv_path()
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if done.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process built it while this one waited
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a build cut short
        steps = (
            [*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)],
            [*_uv(), "pip", "sync", "--quiet", "--python", str(python), "--require-hashes", str(REQUIREMENTS)],
        )
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise PluginVenvUnavailable(
                    f"{' '.join(step[-4:])} failed ({proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}"
                )
        done.write_text(REQUIREMENTS.name + "\n")
    return python


if __name__ == "__main__":
    print(ensure_venv())
