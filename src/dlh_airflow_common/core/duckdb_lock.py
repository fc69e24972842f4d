"""One writer per DuckDB file: dbt commands on the same file wait for each other instead of failing.

DuckDB locks its file for the whole connection, so a second dbt on the same file fails at once with
"Could not set lock on file". Tasks of this library take an ``fcntl`` lock first (a file beside the
database, or under the runtime root when that folder is read-only) and write who holds it there, so a
waiting task can say for whom it waits and a wait that runs out names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dlh_airflow_common.core.exceptions import DbtCancelledException, DbtDuckDBLockedException
from dlh_airflow_common.core.safefs import ensure_dir, open_state_file, secure_root

DEFAULT_WAIT = 3600.0
WAIT_ENV = "DLH_DUCKDB_LOCK_WAIT"  # seconds; the default for every task of a deployment
# dbt commands that never open the database (no adapter connection): they need no lock.
COMMANDS_WITHOUT_DB = frozenset({"parse", "ls", "list", "deps", "clean"})
_POLL = 0.5
_NOT_FILES = (":memory:", "")


def default_wait() -> float:
    """``$DLH_DUCKDB_LOCK_WAIT`` seconds, else one hour; a bad value is an error, not ignored."""
    raw = os.environ.get(WAIT_ENV)
    if raw is None:
        return DEFAULT_WAIT
    try:
        wait = float(raw)
    except ValueError:
        raise ValueError(f"{WAIT_ENV}={raw!r} is not a number of seconds") from None
    if wait < 0:
        raise ValueError(f"{WAIT_ENV}={raw!r} must not be negative")
    return wait


# The Jinja read outside dbt in a target's path: env_var('NAME') and env_var('NAME', 'default').
_ENV_VAR = re.compile(r"""\{\{\s*env_var\(\s*(['"])(\w+)\1\s*(?:,\s*(['"])(.*?)\3\s*)?\)\s*\}\}""")


def render_path(raw: str, env: Mapping[str, str]) -> tuple[str | None, str]:
    """A target's ``path`` as dbt will see it, or None and why not.

    Plain text and ``{{ env_var(...) }}`` (with or without a default) are rendered with ``env``; any
    other Jinja (``var()``, ``target``, filters) only dbt can render.
    """
    missing: list[str] = []

    def value(match: re.Match[str]) -> str:
        name, default = match.group(2), match.group(4)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    path = _ENV_VAR.sub(value, raw)
    if missing:
        return None, f"the environment variable {missing[0]} it reads is not set"
    if "{{" in path or "{%" in path:
        return None, "it uses Jinja other than env_var(), which only dbt renders"
    return path, ""


def file_path(path: str, project_dir: Path | None) -> Path | None:
    """The database file a rendered DuckDB ``path`` names, or None (in-memory, or a service).

    A relative path is taken from ``project_dir``, as by dbt run in the project dir (see
    ``core.duckdb_path``); None leaves it to this process's working dir.
    """
    if path in _NOT_FILES or path.startswith(":memory:") or ":" in path.split("/", 1)[0]:
        return None  # in-memory, or a service such as md:/motherduck:
    file = Path(path).expanduser()
    if project_dir is not None and not file.is_absolute():
        file = project_dir / file
    return file.resolve()


def duckdb_file(output: Mapping[str, Any], words: Sequence[str], env: Mapping[str, str] | None = None,
                say: Callable[[str], None] | None = None, project_dir: Path | None = None) -> Path | None:
    """The DuckDB file a dbt command writes, or None (another adapter, in-memory, no DB opened).

    ``env`` renders ``env_var()`` in the path; a path that cannot be rendered takes no lock, which
    ``say`` reports with the reason. A relative path is the file in ``project_dir``.
    """
    if output.get("type") != "duckdb" or not words or words[0] in COMMANDS_WITHOUT_DB:
        return None
    raw = str(output.get("path") or "")
    path, why = render_path(raw, os.environ if env is None else env)
    if path is None:
        if say is not None:
            say(f"No DuckDB file lock taken for path {raw!r}: {why}; tasks writing the same file at "
                "once may fail with DuckDB's lock conflict")
        return None
    return file_path(path, project_dir)


def _lock_path(db: Path, runtime_root: Path) -> Path:
    beside = db.with_name(db.name + ".dlh-lock")
    if os.access(db.parent, os.W_OK):
        return beside
    digest = hashlib.sha256(str(db).encode()).hexdigest()[:16]
    root = secure_root(runtime_root)
    return ensure_dir(root, root / "locks") / f"duckdb-{digest}.lock"


def _holder(fh: IO[str]) -> str:
    fh.seek(0)
    try:
        who = json.loads(fh.read() or "{}")
    except ValueError:
        who = {}
    if not who:
        return "an unknown process"
    return f"run {who.get('run')} (pid {who.get('pid')} on {who.get('host')}, since {who.get('since')})"


def _try_lock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def duckdb_writer(db: Path | None, *, run_name: str, runtime_root: Path, wait: float,
                  say: Callable[[str], None], cancelled: threading.Event | None = None) -> Iterator[None]:
    """Hold the DuckDB file ``db`` for one dbt command (no-op for None); wait at most ``wait`` s."""
    if db is None:
        yield
        return
    path = _lock_path(db, runtime_root)
    # No link followed, nothing truncated before the lock is ours: the file beside the database may sit
    # in a dir others can write, and must never be a way to empty one of our files.
    with os.fdopen(open_state_file(path), "r+") as fh:
        if not _try_lock(fh):
            holder = _holder(fh)
            say(f"Waiting for DuckDB file {db}: held by {holder} (waiting up to {wait:.0f}s)")
            started = time.monotonic()
            while not _try_lock(fh):
                if cancelled is not None and cancelled.is_set():
                    raise DbtCancelledException(f"Cancelled while waiting for DuckDB file {db}")
                if time.monotonic() - started >= wait:
                    raise DbtDuckDBLockedException(
                        f"DuckDB file {db} is still held by {_holder(fh)} after waiting {wait:.0f}s; "
                        f"DuckDB allows one writer per file (raise {WAIT_ENV} or schedule the tasks "
                        "apart)")
                time.sleep(_POLL)
            say(f"DuckDB file {db} is free after {time.monotonic() - started:.1f}s; holder was {holder}")
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"run": run_name, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
