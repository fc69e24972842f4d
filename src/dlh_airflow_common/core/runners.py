"""Two ways to run dbt behind one interface: a child process (cancellable, isolated) or in-process.

The subprocess runner is the default: dbt gets its own process group, its secrets live only in its
environment, and cancellation sends SIGINT (dbt then cancels its open warehouse queries), waits, and
only then SIGKILLs the group. The in-process runner saves interpreter start-up for short commands but
cannot be interrupted, and dbtRunner must never run twice at once in one process, so calls are serialised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dlh_airflow_common._dbt_entry import exception_event
from dlh_airflow_common.core import warm
from dlh_airflow_common.core.exceptions import DbtException

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
TextSink = Callable[[str], None]

# Settings every dbt process gets: machine-readable stdout, no network calls, no colour codes.
BASE_ENV = {
    "DBT_LOG_FORMAT": "json",
    "DBT_LOG_FORMAT_FILE": "text",
    "DBT_USE_COLORS": "false",
    "DBT_USE_COLORS_FILE": "false",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}


# dbt run through our entry or dbtRunner: its events reach us through a callback, so dbt's own
# console stays silent (it would print every error a second time as text).
_ENTRY_CONSOLE = {"DBT_LOG_FORMAT": "text", "DBT_QUIET": "true", "DBT_LOG_LEVEL": "none"}


def _silent_console(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with dbt's console off; dbt.log keeps its own level (dbt would take the console's)."""
    return {"DBT_LOG_LEVEL_FILE": "debug", **env, **_ENTRY_CONSOLE}


@dataclass
class DbtCall:
    """One dbt process: its arguments (no secrets) and its environment additions."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass
class RunnerResult:
    return_code: int
    cancelled: bool = False
    timed_out: bool = False


class Runner(Protocol):
    def run(self, call: DbtCall, on_event: EventSink, on_text: TextSink,
            timeout: float | None = None) -> RunnerResult: ...

    def cancel(self) -> None: ...

    def describe(self, args: Sequence[str]) -> str: ...


def resolve_dbt_executable(venv_path: str | None = None, executable: str | None = None) -> str:
    """Find the dbt to run: an explicit executable, a virtualenv's, or the one beside this Python."""
    if executable:
        candidate = shutil.which(executable)
        if candidate:
            return candidate
        raise DbtException(f"dbt executable {executable!r} not found; pass a path to an existing dbt")
    if venv_path:
        candidate_path = Path(venv_path) / "bin" / "dbt"
        if candidate_path.is_file() and os.access(candidate_path, os.X_OK):
            return str(candidate_path)
        raise DbtException(
            f"No dbt executable in virtualenv {venv_path!r} (looked for {candidate_path}); "
            "install dbt-core and your adapter there or fix venv_path"
        )
    beside = Path(sys.executable).parent / "dbt"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dbt")
    if found:
        return found
    raise DbtException("No dbt executable found; install dbt-core in this environment or pass venv_path")


class SubprocessRunner:
    """dbt as a child process in its own process group, streamed as JSON log lines."""

    def __init__(
        self,
        venv_path: str | None = None,
        executable: str | None = None,
        cancel_grace: float = 30.0,
        inherit_env: bool = True,
    ) -> None:
        self.executable = resolve_dbt_executable(venv_path, executable)
        # dbt installed beside this Python: start it through our entry, which streams only the
        # events we read (cheaper than dbt's JSON console log); any other dbt runs as its CLI.
        self._entry = venv_path is None and executable is None and \
            Path(self.executable).parent == Path(sys.executable).parent
        self.cancel_grace = cancel_grace
        self.inherit_env = inherit_env
        self._proc: subprocess.Popen[str] | warm.WarmProcess | None = None
        self._cancelled = threading.Event()
        self._lock = threading.RLock()  # cancel() may run in a signal handler on this thread

    def describe(self, args: Sequence[str]) -> str:
        return " ".join(["dbt", *args])

    @property
    def pid(self) -> int | None:
        """The running dbt process (leader of its process group), if any."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        # Inherit by default: a user's own profiles.yml may read DBT_ENV_SECRET_* from the worker.
        env = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
        env.update(BASE_ENV)
        env.update(extra)
        return env

    def run(self, call: DbtCall, on_event: EventSink, on_text: TextSink,
            timeout: float | None = None) -> RunnerResult:
        self._cancelled.clear()
        timed_out = threading.Event()
        proc: subprocess.Popen[str] | warm.WarmProcess | None = None
        if self._entry:
            argv = [sys.executable, "-m", "dlh_airflow_common._dbt_entry", *call.args]
            env = _silent_console(self._environment(call.env))
            proc = warm.start(list(call.args), env, call.cwd)  # the same entry, forked with dbt imported
        else:
            argv, env = [self.executable, *call.args], self._environment(call.env)
        if proc is None:
            proc = subprocess.Popen(
                argv,
                cwd=call.cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,  # own process group: signals reach dbt and its children only
            )
        with self._lock:
            self._proc = proc
        timer: threading.Timer | None = None
        if timeout:
            def _expire() -> None:
                timed_out.set()
                self.cancel()

            timer = threading.Timer(timeout, _expire)
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                _dispatch(line, on_event, on_text)
            rc = proc.wait()
            if rc < 0 and not self._cancelled.is_set():
                on_event(killed_event(proc.pid, rc))
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:  # interrupted while reading (e.g. on_kill raised in this thread)
                self._terminate(proc)
            with self._lock:
                self._proc = None
        return RunnerResult(rc, cancelled=self._cancelled.is_set(), timed_out=timed_out.is_set())

    def cancel(self) -> None:
        """SIGINT to dbt's process group, wait ``cancel_grace`` seconds, then SIGKILL."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._cancelled.set()
        self._terminate(proc)

    def _terminate(self, proc: subprocess.Popen[str] | warm.WarmProcess) -> None:
        pgid = proc.pid  # start_new_session made dbt the leader of its own group
        log.warning("Cancelling dbt (pid %s): SIGINT, up to %.0fs to stop", proc.pid, self.cancel_grace)
        _killpg(pgid, signal.SIGINT)
        deadline = time.monotonic() + self.cancel_grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
        log.warning("dbt did not stop within %.0fs; sending SIGKILL", self.cancel_grace)
        _killpg(pgid, signal.SIGKILL)
        proc.wait()


def killed_event(pid: int, rc: int) -> dict[str, Any]:
    """A dbt process that a signal ended, as the exception event its failure headline is made from.

    Without it, the headline would be the last line dbt happened to print, as if dbt had failed.
    """
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    event = exception_event(RuntimeError(
        f"dbt (pid {pid}) was killed by {name} before it reported a result (out of memory, or killed "
        f"from outside); return code {rc}"))
    event["data"]["classes"] = ["DbtProcessKilled"]
    return event


def _dispatch(line: str, on_event: EventSink, on_text: TextSink) -> None:
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict) and "info" in event:
            on_event(event)
            return
    on_text(line)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_IN_PROCESS_LOCK = threading.Lock()


class InProcessRunner:
    """dbt through ``dbtRunner`` in this process; calls are serialised, cancellation is not possible."""

    def __init__(self) -> None:
        self.executable = "dbtRunner"

    def describe(self, args: Sequence[str]) -> str:
        return " ".join(["dbt", *args])

    def run(self, call: DbtCall, on_event: EventSink, on_text: TextSink,
            timeout: float | None = None) -> RunnerResult:
        from dbt.cli.main import dbtRunner
        from google.protobuf.json_format import MessageToDict

        def _callback(msg: Any) -> None:
            on_event(MessageToDict(msg, preserving_proto_field_name=True))

        env = {**_silent_console(BASE_ENV), **call.env}
        with _IN_PROCESS_LOCK, _patched_environ(env), _chdir(call.cwd):
            result = dbtRunner(callbacks=[_callback]).invoke(list(call.args))
        if result.exception is not None:
            on_event(exception_event(result.exception))
            return RunnerResult(2)
        return RunnerResult(0 if result.success else 1)

    def cancel(self) -> None:
        log.warning("The in-process dbt runner cannot be interrupted; it stops when the current command ends")


class _patched_environ:
    """Set variables for the duration of one in-process dbt call, then restore them exactly."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, old in self.saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class _chdir:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.old = os.getcwd()

    def __enter__(self) -> None:
        if self.path is not None:
            os.chdir(self.path)

    def __exit__(self, *exc: object) -> None:
        os.chdir(self.old)
