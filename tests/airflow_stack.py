"""The Airflow components as child processes (api-server, scheduler, dag-processor, triggerer), each in its
own process group with a log file, and stopped so that nothing they started survives.

Shared by the tests that run a real stack (tests/test_scheduler_smoke.py and the tests built on it), the
benchmarks (bench/per_node.py) and `make demo-ui` (examples/demo_ui.py). Nothing here imports pytest or
the suite's conftest, so a script can use it with only the repository on ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.processes import pids_with_env


def _airflow(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "airflow", *args]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text[-lines:])


class AirflowStack:
    """The Airflow components as child processes, each in its own process group with a log file."""

    def __init__(self, home: Path, env: dict[str, str], api_port: int, python: str = sys.executable) -> None:
        self.python = python  # the interpreter of the Airflow install (the bench runs Cosmos from its own venv)
        self.home = home
        self.env = env
        self.api_port = api_port
        self.logs = home / "component-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.clis: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_airflow(*args, python=self.python), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def cli_start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(_airflow(*args, python=self.python), env=self.env, stdin=subprocess.DEVNULL, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.clis.append(proc)
        return proc

    def start(self, name: str, *args: str, label: str | None = None) -> None:
        """Start one component; ``label`` names a second one of the same kind (e.g. another triggerer)."""
        label = label or name
        with (self.logs / f"{label}.log").open("ab") as log:
            self.procs[label] = subprocess.Popen(
                _airflow(name, *args, python=self.python), env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def dead(self) -> list[str]:
        return [f"{name} (rc={p.returncode})" for name, p in self.procs.items() if p.poll() is not None]

    def api_healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.api_port}/execution/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def report(self) -> str:
        parts = [f"dead components: {self.dead() or 'none'}"]
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {path.name} (tail) -----\n{_tail(path)}")
        for path in sorted((self.home / "logs").rglob("*.log*")):
            if "dag_id=" in str(path):
                parts.append(f"----- {path.relative_to(self.home)} (tail) -----\n{_tail(path, 30)}")
        return "\n".join(parts)

    def stop(self) -> list[int]:
        """SIGTERM every group, wait, SIGKILL what is left, then any descendant that left its group.

        Returns the pids still alive afterwards (none expected).
        """
        procs: list[subprocess.Popen[Any]] = [*self.procs.values(), *self.clis]
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Anything that started its own session (a detached dbt run, a task process) still carries our
        # unique AIRFLOW_HOME in its environment.
        deadline = time.monotonic() + 10
        while (left := pids_with_env(f"AIRFLOW_HOME={self.home}")) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return left


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
