"""A dbt run that outlives the process that started it (deferrable tasks).

``launch()`` starts ``python -m dlh_airflow_common.core.detached <spec>`` in its own session, so the
worker's task process may exit (defer) while dbt keeps running on that host. The supervisor writes
everything a watcher needs into a *control dir* under the runtime root:

    deferred/<run name>/
        spec.json       what to run (no secrets: those travel in the supervisor's environment)
        status.json     state, host, pid, heartbeat, the nodes running and finished so far (``nodes``),
                        and at the end the result or the error
        progress.log    the progress lines and summary, for the trigger to relay to the task log
        cancel          created by a watcher to ask for cancellation (SIGINT, grace, SIGKILL)
        abandoned       created with ``cancel`` when nobody will resume the task (a killed task):
                        the supervisor then removes this control dir itself when dbt has stopped
        watched         touched by whoever watches (the task before it defers, then its trigger); when
                        nobody has for ``unwatched_timeout`` seconds, the supervisor takes the
                        task for killed (Airflow before 3.3 never calls a trigger's on_kill, and
                        no trigger ever starts for a task killed just as it deferred) and cancels
        artifacts/      the run's manifest/run_results/sources/catalog, kept for the resuming task

A watcher on another host sees all of it only when the runtime root is a shared volume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dlh_airflow_common.core.artifacts import ARTIFACTS, DOCS_PAGES, RunSummary
from dlh_airflow_common.core.events import redact
from dlh_airflow_common.core.exceptions import DbtException, DbtRuntimeRootException
from dlh_airflow_common.core.invoke import DbtCommand, DbtInvoker, DbtTaskResult
from dlh_airflow_common.core.profile_setup import ProfileConfig
from dlh_airflow_common.core.profiles import SECRET_PREFIX, RenderedProfile
from dlh_airflow_common.core.retention import CURRENT_LINK, ActiveMark
from dlh_airflow_common.core.runners import SubprocessRunner
from dlh_airflow_common.core.runtime import RunIdentity
from dlh_airflow_common.core.safefs import ensure_dir, remove_tree, secure_root, touch
from dlh_airflow_common.core.store import StateStore, store_from_env
from dlh_airflow_common.core.store_stream import StoreStreamWriter
from dlh_airflow_common.core.stream import (
    NODE_RESULTS,
    NodeIndex,
    NodeResultWriter,
    NodeTally,
    current_launch,
    read_node_index,
    write_node_index,
)

TERMINAL = {"success", "failed", "cancelled"}
HEARTBEAT_SECONDS = 5.0
# How often a watcher (the trigger, or the task itself before it defers) stamps the ``watched`` file:
# the supervisor cancels a run nobody has stamped for ``unwatched_timeout`` (a killed task).
WATCHED_STAMP_SECONDS = 5.0
_STATUS_LOCK = threading.Lock()


@dataclass
class ControlDir:
    """Paths of one detached run's control files."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def progress(self) -> Path:
        return self.path / "progress.log"

    @property
    def cancel_flag(self) -> Path:
        return self.path / "cancel"

    @property
    def abandoned_flag(self) -> Path:
        return self.path / "abandoned"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def watched_flag(self) -> Path:
        return self.path / "watched"

    def mark_watched(self) -> None:
        """A trigger is watching this run (its stamp is the supervisor's proof of life of the task)."""
        try:
            touch(self.watched_flag)
        except (OSError, DbtRuntimeRootException):
            pass  # the dir is gone: the run is over

    def unwatched_for(self) -> float | None:
        """Seconds since a trigger last watched, or None if none has yet (the task has not deferred)."""
        try:
            return time.time() - self.watched_flag.stat().st_mtime
        except OSError:
            return None

    def status_stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the status is rewritten (a new file each time): a cheap test for news."""
        try:
            st = self.status.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_status(self, **fields: Any) -> None:
        with _STATUS_LOCK:  # the heartbeat thread must never write back a stale state
            current = self.read_status() or {}
            if current.get("state") in TERMINAL and "state" not in fields:
                return
            current.update(fields)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".status.")
            with os.fdopen(fd, "w") as fh:
                json.dump(current, fh)
            os.replace(tmp, self.status)  # watchers never see a half-written status

    def request_cancel(self) -> None:
        touch(self.cancel_flag)

    def remove(self) -> None:
        """Remove the control dir itself, never what a link in its place names.

        A producer's newest launch takes its stream dir's ``current`` link along (and the stream dir,
        once empty): watchers then see the run gone, and nothing of a killed run is left.
        """
        remove_tree(self.path.parent, self.path)
        current = self.path.parent / CURRENT_LINK
        with contextlib.suppress(OSError):
            if os.readlink(current) == self.path.name:
                current.unlink()
                self.path.parent.rmdir()

    def abandon(self) -> None:
        """Cancel a run whose task nobody will resume; returns at once (the supervisor cleans up).

        The supervisor removes the dir once dbt has stopped; if it had already finished, or is gone,
        nobody else will, so the dir is removed here. Flag before status read, status write before
        flag check (supervisor): one of the two always sees the other.
        """
        try:
            touch(self.abandoned_flag)
            self.request_cancel()
        except (OSError, DbtRuntimeRootException):
            return  # already removed
        status = self.read_status()
        if status is None or status.get("state") in TERMINAL or self.supervisor_gone(status):
            self.remove()

    def progress_since(self, offset: int) -> tuple[list[str], int]:
        """The whole progress lines written after ``offset``, and the offset to read from next."""
        try:
            with self.progress.open("rb") as fh:
                fh.seek(offset)
                return whole_lines(fh), fh.tell()
        except OSError:
            return [], offset

    def outcome(self, status: dict[str, Any], started_at: float | None,
                state: str | None = None) -> dict[str, Any]:
        """The event a finished run resumes its task with (from the trigger, or the worker's own watch)."""
        return {"status": state or status.get("state"), "control_dir": str(self.path),
                "result": status.get("result"), "error": status.get("error"), "host": status.get("host"),
                "started_at": started_at}

    def progress_tail(self, lines: int = 30) -> str:
        try:
            text = self.progress.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def supervisor_gone(self, status: dict[str, Any]) -> bool:
        """True when the supervisor runs on this host and its process no longer exists."""
        pid = status.get("pid")
        if status.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False  # another host: only the heartbeat can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def whole_lines(fh: BinaryIO | None) -> list[str]:
    """The complete new lines of an open file (a partial last line waits for the next read)."""
    if fh is None:
        return []
    start = fh.tell()
    data = fh.read()
    end = data.rfind(b"\n") + 1
    fh.seek(start + end)
    return [line for line in data[:end].decode(errors="replace").splitlines() if line.strip()]


SUMMARY_PREFIX = "dbt summary:"  # how RunSummary.lines() starts: dbt's own summary has arrived


def partial_summary(status: dict[str, Any], now: float | None = None) -> list[str]:
    """What the run had done by the time of ``status``, in the words of the run's own summary.

    For a watcher that cannot wait for dbt's summary (a killed deferred task): the nodes that had
    finished, by status, and those still running, as the supervisor last recorded them.
    """
    nodes = status.get("nodes") or {}
    running = [str(uid) for uid in nodes.get("running") or []]
    counts = {str(k): int(v) for k, v in (nodes.get("counts") or {}).items()}
    if running:
        counts["running"] = len(running)
    began = float(status.get("launched") or status.get("heartbeat") or time.time())
    summary = RunSummary(counts=counts, failures=list(nodes.get("failures") or []),
                         elapsed=max(0.0, (now or time.time()) - began))
    lines = summary.lines()
    if running:
        lines.append("  running when killed: " + ", ".join(running))
    return lines


@dataclass
class DetachedSpec:
    """Everything the supervisor needs, all JSON-safe and free of secret values."""

    project_dir: str
    runtime_root: str | None
    command: dict[str, Any]
    identity: dict[str, Any]
    profile_name: str | None = None
    target_name: str | None = None
    profile_document: dict[str, Any] | None = None
    profiles_dir: str | None = None
    schema_override: str | None = None
    keep_target_artifacts: bool = False
    target_path: str | None = None
    retry_limit: int = 0
    retry_delay: float = 1.0
    env_vars: dict[str, str] | None = None
    venv_path: str | None = None
    dbt_executable: str | None = None
    cancel_grace: float = 30.0
    unwatched_timeout: float = 0.0  # > 0: cancel when no trigger has watched for this long (see above)
    partial_parse: bool = True
    stream_nodes: bool = False  # append each finished node's result to nodes.jsonl (core.stream)
    # A state store instead (core.store_stream): its URL and protocol, and this launch's key prefix in it.
    # Its credentials come in the supervisor's environment (core.store.STORE_OPTIONS_ENV) only.
    store_url: str | None = None
    store_protocol: str | None = None
    store_prefix: list[str] | None = None
    control_key: list[str] | None = None  # a deferred run mirrored to the store (core.store_control)


def launch(spec: DetachedSpec, runtime_root: Path, secret_env: Mapping[str, str],
           stream: Path | None = None, node_index: NodeIndex | None = None) -> ControlDir:
    """Start the supervisor in a new session and return its control dir (0700, new for each launch).

    A deferred run's dir goes under ``deferred/``. A producer's goes into its ``stream`` dir (found by
    DAG run, :func:`core.stream.stream_dir`), whose ``current`` link then moves to it; the earlier
    launch there is abandoned (its supervisor stops dbt and removes its own dir), and since every
    launch writes only into its own dir, a stale supervisor can never write into a newer one.
    ``node_index`` (a mapped node task's nodes) is written before the launch is linked.
    """
    root = secure_root(runtime_root)
    parent = ensure_dir(root, stream if stream is not None else root / "deferred")
    ctl = ControlDir(Path(tempfile.mkdtemp(prefix="run_", dir=parent)))
    fd = os.open(ctl.spec, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(spec), fh)
    if node_index is not None:
        write_node_index(ctl.path, node_index)
    ctl.write_status(state="starting", host=socket.gethostname(), heartbeat=time.time(), launched=time.time())
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX)}
    env.update(secret_env)  # nothing here imports Airflow: its worker settings need not be valid
    log_fh = ctl.progress.open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dlh_airflow_common.core.detached", str(ctl.path)],
            env=env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    finally:
        log_fh.close()
    ctl.write_status(pid=proc.pid)
    if stream is not None:
        earlier = current_launch(stream)
        link = stream / f".{CURRENT_LINK}.{ctl.path.name}"
        link.symlink_to(ctl.path.name)
        os.replace(link, stream / CURRENT_LINK)  # watchers move to this launch at once
        if earlier is not None and earlier != ctl.path:
            ControlDir(earlier).abandon()
    return ctl


def _supervise(ctl: ControlDir) -> int:
    _alive = ActiveMark(ctl.path)  # held until this process exits: retention leaves the dir alone
    spec = DetachedSpec(**json.loads(ctl.spec.read_text()))
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
    for noisy in ("airflow", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    secret_env = {k: v for k, v in os.environ.items() if k.startswith(SECRET_PREFIX)}
    rendered = None
    if spec.profile_document is not None:
        rendered = RenderedProfile(spec.profile_name or "default", spec.target_name or "airflow",
                                   spec.profile_document, secret_env)
    profile = ProfileConfig(rendered=rendered, profiles_dir=spec.profiles_dir,
                            profile_name=spec.profile_name, target_name=spec.target_name,
                            schema_override=spec.schema_override)

    def keep_artifacts(target: Path, _result: DbtTaskResult | None) -> None:
        copy_artifacts(target, ctl.artifacts)

    secrets = [v for v in secret_env.values() if v]

    def clean(text: str) -> str:
        return redact(text, secrets)

    tally = NodeTally(clean)  # in the status file: what a killed watcher reports if dbt's summary is late
    store = store_from_env(spec.store_url, spec.store_protocol or "s3") if spec.store_url else None
    stored = _store_writer(spec, store, clean, lambda why: _lost_store(why, invoker))
    mirror = _control_mirror(spec, store, ctl)
    writer = NodeResultWriter(ctl.path / NODE_RESULTS, clean) if spec.stream_nodes and not stored else None

    def on_event(event: dict[str, Any]) -> None:
        tally(event)
        if writer is not None:
            writer(event)
        if stored is not None:
            stored(event)

    invoker = DbtInvoker(
        spec.project_dir, profile,
        runner=SubprocessRunner(spec.venv_path, spec.dbt_executable, cancel_grace=spec.cancel_grace),
        runtime_root=spec.runtime_root, identity=RunIdentity(**spec.identity),
        keep_target_artifacts=spec.keep_target_artifacts, target_path=spec.target_path,
        retry_limit=spec.retry_limit,
        retry_delay=spec.retry_delay, env_vars=spec.env_vars, partial_parse=spec.partial_parse,
        progress=lambda line: print(line, flush=True), artifacts_callback=keep_artifacts,
        event_sink=on_event,
    )
    stop = threading.Event()

    def watch() -> None:
        """Heartbeat for the watcher, and honour a cancel request written by it."""
        beat, nodes_written = 0.0, 0
        while not stop.wait(0.5):
            if time.monotonic() - beat >= HEARTBEAT_SECONDS:
                ctl.write_status(heartbeat=time.time())
                beat = time.monotonic()
            if tally.version != nodes_written:
                nodes_written = tally.version
                ctl.write_status(nodes=tally.snapshot())
            if ctl.cancel_flag.exists():
                print("Cancellation requested by the watcher", flush=True)
                # Before dbt stops: node watchers of a streamed run must not take a node that the
                # cancel cuts short for a node that failed, nor wait for nodes that will never come.
                ctl.write_status(cancel_requested=time.time())
                if stored is not None:
                    _mark_cancel(stored)
                invoker.cancel()
                return
            unwatched = ctl.unwatched_for() if spec.unwatched_timeout > 0 else None
            if unwatched is not None and unwatched > spec.unwatched_timeout:
                print(f"No trigger has watched this run for {unwatched:.0f}s (unwatched_timeout="
                      f"{spec.unwatched_timeout:.0f}s): its task was killed or lost; cancelling dbt",
                      flush=True)
                touch(ctl.abandoned_flag)  # no task will resume to read this dir
                ctl.request_cancel()
                invoker.cancel()
                return

    ctl.write_status(state="running", pid=os.getpid(), heartbeat=time.time())
    final = "failed"
    try:
        if stored is not None:
            stored.start(index=read_node_index(ctl.path), pid=os.getpid(), launched=time.time())
        if mirror is not None:
            mirror.start()
        threading.Thread(target=watch, daemon=True).start()
        result = invoker.invoke(DbtCommand(**spec.command))
        ctl.write_status(state="success", result=result.to_dict(), finished=time.time())
        final = "success"
        return 0
    except DbtException as exc:
        final = "cancelled" if ctl.cancel_flag.exists() else "failed"
        ctl.write_status(state=final, error=exc.to_dict(), finished=time.time())
        return 1
    except Exception as exc:  # anything else still has to reach the watcher
        ctl.write_status(state="failed", error=DbtException(f"dbt supervisor crashed: {exc!r}").to_dict(),
                         finished=time.time())
        return 1
    finally:
        stop.set()
        if stored is not None:
            _close_store(ctl, stored, final)
        if mirror is not None:
            try:
                mirror.close()
                counts = mirror.store.request_counts()
                print(f"State store requests by this run's mirror: {counts}", flush=True)
                if mirror.watched:  # the task resumes from the store, on any host: nobody reads this dir
                    touch(ctl.abandoned_flag)
            except Exception as exc:
                print(f"Could not write the final status to the state store: {exc}", flush=True)
        if ctl.abandoned_flag.exists():  # a killed task: no one will resume it to read this dir
            ctl.remove()


def _store_writer(spec: DetachedSpec, store: StateStore | None, clean: Callable[[str], str],
                  on_lost: Callable[[str], None]) -> StoreStreamWriter | None:
    """The writer of this launch's node results in the state store, when the spec names one."""
    if not (spec.stream_nodes and store is not None and spec.store_prefix):
        return None
    return StoreStreamWriter(store, tuple(spec.store_prefix), clean, on_lost=on_lost)


def _control_mirror(spec: DetachedSpec, store: StateStore | None, ctl: ControlDir) -> Any:
    """The mirror of this control dir in the state store, for watchers on other hosts (or None)."""
    if store is None or not spec.control_key:
        return None
    from dlh_airflow_common.core.store_control import ControlMirror  # it builds on this module

    return ControlMirror(store, tuple(spec.control_key), ctl)


def _lost_store(why: str, invoker: DbtInvoker) -> None:
    """Nobody can watch a run whose results cannot be written: stop dbt rather than run unwatched."""
    print(f"Stopping dbt: {why}", flush=True)
    invoker.cancel()


def _mark_cancel(stored: StoreStreamWriter) -> None:
    try:
        stored.mark_now(cancel_requested=time.time())
    except Exception as exc:  # the store is down: node watchers fail on the heartbeat instead
        print(f"Could not mark the cancel in the state store: {exc}", flush=True)


def _close_store(ctl: ControlDir, stored: StoreStreamWriter, state: str) -> None:
    """The last results, then the final status; the request counts go to the run's log."""
    try:
        stored.close(state=state)
    except Exception as exc:
        print(f"Could not write the final status to the state store: {exc}", flush=True)
    counts = stored.store.request_counts()
    final = (ctl.read_status() or {}).get("state") or state  # a final status takes new fields with its state
    ctl.write_status(state=final, store_requests=counts)
    print(f"State store requests by this run's producer: {counts}", flush=True)


def copy_artifacts(target: Path, dest: Path) -> None:
    """Copy the run's artifacts out of a target dir that is about to be removed."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (*ARTIFACTS, *DOCS_PAGES):
        if (target / name).is_file():
            shutil.copyfile(target / name, dest / name)


if __name__ == "__main__":
    sys.exit(_supervise(ControlDir(Path(sys.argv[1]))))
