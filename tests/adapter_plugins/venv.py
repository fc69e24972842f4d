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
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.adapter_plugins.probe import PLUGINS

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


@dataclass(frozen=True)
class PluginVenv:
    python: Path
    install_errors: dict[str, str]  # plugin -> uv's error, for plugins that could not be installed


def _run(what: str, step: list[str]) -> str | None:
    """None on success, else what failed and the tail of uv's error output."""
    proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return None
    return f"{what} failed ({proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}"


def _pins() -> dict[str, str]:
    """name -> 'name==version' from the hashed requirements, to install plugins one by one within them."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", REQUIREMENTS.read_text(), flags=re.M)
    return {name.lower(): f"{name}=={version}" for name, version in found}


def _install_one_by_one(python: Path) -> dict[str, str]:
    """After the locked sync failed: each plugin on its own, so one that cannot install skips only itself."""
    pins = _pins()
    constraints = python.parent.parent / "constraints.txt"
    constraints.write_text("\n".join(pins.values()) + "\n")
    install = [*_uv(), "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints)]
    core_error = _run(f"uv pip install {pins['dbt-core']}", [*install, pins["dbt-core"]])
    if core_error:
        raise PluginVenvUnavailable(core_error)
    errors = {}
    for plugin in PLUGINS:
        wanted = pins.get(plugin, plugin)
        error = _run(f"uv pip install {wanted}", [*install, wanted])
        if error:
            errors[plugin] = error
    return errors


def ensure_venv() -> PluginVenv:
    """The plugins venv, built first if this requirements.txt has none complete yet.

    The locked install is all or nothing; when it fails, each plugin is installed alone so that only the
    ones that cannot install here are reported (with uv's error), and the venv is not marked complete:
    the next run tries the locked install again.
    """
    venv = venv_path()
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if done.exists():
        return PluginVenv(python, {})
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process built it while this one waited
            return PluginVenv(python, {})
        shutil.rmtree(venv, ignore_errors=True)  # a build cut short, or a partial one
        error = _run(f"uv venv {venv}", [*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)])
        if error:
            raise PluginVenvUnavailable(error)
        if _run("uv pip sync", [*_uv(), "pip", "sync", "--quiet", "--python", str(python), "--require-hashes",
                                str(REQUIREMENTS)]) is None:
            done.write_text(REQUIREMENTS.name + "\n")
            return PluginVenv(python, {})
        return PluginVenv(python, _install_one_by_one(python))


if __name__ == "__main__":
    built = ensure_venv()
    for plugin, error in built.install_errors.items():
        print(f"{plugin} could not be installed: {error}", file=sys.stderr)
    print(built.python)
