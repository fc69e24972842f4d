"""What the warm dbt server does so that its forks start with more than dbt imported.

Importing dbt is not all a first dbt command pays: in a fresh process, dbt also builds the JSON
schemas and (de)serialisers of its manifest classes, compiles its global macros and imports the task
and adapter modules of the command it runs. A fork of a server that did none of this pays it again
in every dbt process (measured: 1.45 s for a one-node ``build`` on a 100-model project, against
0.48 s in a process that had built before). Two things move that work into the server, once:

- :func:`warm_up` parses a tiny bundled project with each adapter among :data:`PROFILES` that is
  installed (DuckDB in memory, PostgreSQL with a made-up host: ``parse`` opens no connection), twice,
  so the second reads its partial-parse file. No secret, no user project, nothing left on disk.
- :func:`record_imports` (in a dbt child, after its command) writes the modules that command
  imported to the server's private dir; :func:`preload` (in the server, before the next fork)
  imports those that are installed with Python, never a module from a project or the working dir,
  whose code must not run in a server that forks dbt for every project on the host.

dbt resets its adapters and event loggers at the start of every invocation, so the warm-up leaves
no state that a later command could see. Every step is best effort: a failure is logged by the
server and its forks start as before.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# One target per adapter the warm-up can parse with, without a secret or a reachable server.
PROFILES: dict[str, dict[str, Any]] = {
    "duckdb": {"type": "duckdb", "path": ":memory:", "schema": "main"},
    "postgres": {"type": "postgres", "host": "localhost", "port": 5432, "user": "warm_up", "password": "",
                 "dbname": "warm_up", "schema": "warm_up"},
}
_PROJECT = {
    "dbt_project.yml": "name: dlh_warm_up\nversion: '1.0.0'\nconfig-version: 2\nprofile: dlh_warm_up\n",
    "models/first.sql": "select 1 as id",
    "models/second.sql": "select id from {{ ref('first') }}",
    "models/schema.yml": ("version: 2\nmodels:\n  - name: second\n    columns:\n      - name: id\n"
                          "        data_tests: [not_null, unique]\n"),
}


def warm_up(work_dir: Path, say: Any = print) -> list[str]:
    """Parse the bundled project with every installed adapter of :data:`PROFILES`, say how long it took
    in the server's log; the adapters parsed."""
    from dbt.cli.main import dbtRunner

    started = time.monotonic()
    done: list[str] = []
    for adapter, output in PROFILES.items():
        if importlib.util.find_spec(f"dbt.adapters.{adapter}") is None:
            continue
        project = work_dir / f"warm-up-{adapter}-{os.getpid()}"
        try:
            project.mkdir(mode=0o700)
            for name, text in _PROJECT.items():
                (project / name).parent.mkdir(exist_ok=True)
                (project / name).write_text(text)
            (project / "profiles.yml").write_text(json.dumps(
                {"dlh_warm_up": {"target": "warm_up", "outputs": {"warm_up": output}}}))
            # --no-static-parser: dbt's static parser is native code whose state, once used, makes a
            # fork that parses models hang (tests/test_processes.py found it); jinja warms the rest.
            args = ["parse", "--no-static-parser", "--quiet", "--log-level", "none",
                    "--log-level-file", "none", "--no-send-anonymous-usage-stats",
                    "--project-dir", str(project),
                    "--profiles-dir", str(project), "--target-path", str(project / "target"),
                    "--log-path", str(project / "logs")]
            for _ in range(2):  # the second parse reads the first one's partial-parse file
                result = dbtRunner(callbacks=[]).invoke(args)
                if not result.success:
                    raise RuntimeError(f"dbt parse failed: {result.exception}")
            done.append(adapter)
        except Exception as exc:  # best effort: forks start as they would without it
            say(f"warm-up with {adapter} skipped: {exc}")
        finally:
            shutil.rmtree(project, ignore_errors=True)
    say(f"warm-up: parsed with {', '.join(done) or 'no adapter'} in {time.monotonic() - started:.1f}s")
    return done


def os_threads() -> int:
    """Threads of this process as the OS sees them (native ones too); 1 where /proc is missing.

    A fork copies only the calling thread: a lock another thread held stays held forever in the child.
    The server forks only while this is 1.
    """
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def modules_file(home: Path, key: str) -> Path:
    return home / f"{key}.modules"


def record_imports(home: Path, key: str, before: Iterable[str]) -> None:
    """In a dbt child: write the modules its command imported (none: nothing written)."""
    new = sorted(set(sys.modules) - set(before))
    if not new:
        return
    path = modules_file(home, key)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            json.dump(new, out)
        os.replace(tmp, path)


class Preloader:
    """In the server: imports what its children recorded, once, when it comes from an installed package."""

    def __init__(self, home: Path, key: str) -> None:
        self.path = modules_file(home, key)
        self.skipped: set[str] = set()
        self._seen = 0
        self._roots = tuple({os.path.realpath(p) + os.sep for name, p in sysconfig.get_paths().items()
                             if name in ("stdlib", "platstdlib", "purelib", "platlib")})

    def preload(self) -> list[str]:
        """Import the recorded modules not imported yet; the names imported."""
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._seen:
                return []
            self._seen = stamp
            names = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        loaded = []
        for name in sorted(n for n in names if isinstance(n, str)):  # a package before its modules
            if name in sys.modules or name in self.skipped:
                continue
            parent = name.rpartition(".")[0]
            if (parent and parent not in sys.modules) or not self._installed(name):
                self.skipped.add(name)
                continue
            try:
                importlib.import_module(name)
                loaded.append(name)
            except Exception:  # a module that imports only in its command's context
                self.skipped.add(name)
        return loaded

    def _installed(self, name: str) -> bool:
        """True for a module of the stdlib or site-packages: no project's or working dir's code."""
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        if spec.origin in ("built-in", "frozen"):
            return True
        places = ([spec.origin] if spec.has_location and spec.origin
                  else list(spec.submodule_search_locations or []))
        return bool(places) and all(os.path.realpath(p).startswith(self._roots) for p in places)
