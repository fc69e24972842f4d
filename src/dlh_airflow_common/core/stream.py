"""Per-node results of one producer ``dbt build``, streamed as dbt finishes each node.

The producer (a detached run, ``core.detached``) appends one JSON line per finished node to
``nodes.jsonl`` in its control dir, from dbt's own ``NodeFinished`` events (not from run_results at
the end). Watchers read it through :class:`NodeChannel`: :class:`ControlDirChannel` on the
shared runtime root, or ``core.store_stream.StoreChannel`` when a state store (``s3://``) replaces
the shared volume. Nothing is written per node anywhere else (no XCom, no Variable).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dlh_airflow_common.core.artifacts import FAILED
from dlh_airflow_common.core.exceptions import DbtException
from dlh_airflow_common.core.names import id_dir
from dlh_airflow_common.core.retention import CURRENT_LINK
from dlh_airflow_common.core.safefs import ensure_dir, secure_root

NODE_RESULTS = "nodes.jsonl"
# The mapped node task's map index -> its node and the tests that run with it, written once per launch
# before the launch is visible: a node trigger born with only its map index reads its node from here.
NODE_INDEX = "node_index.json"
NodeIndex = list[tuple[str, list[str]]]  # [map index] -> (unique id, the tests that run with it)
# Written by a producer that failed before it launched dbt (a bad project, profile or deployment
# setting): without it, its node tasks would wait for a launch that never comes.
EARLY_FAILURE = "failed_before_launch.json"
# Statuses that mean the node is done and fine; a warn test is fine but reported as a warning.
GOOD = {"success", "pass", "warn"}


def stream_dir(runtime_root: Path, dag_id: str, run_id: str) -> Path:
    """Where the producer of one DAG run keeps its launches: found from (dag id, run id) alone.

    Each launch (each try of the producer) gets a control dir of its own below it, and
    ``current`` links to the newest: a stale supervisor of an earlier try writes only into its own.
    """
    return runtime_root / "streams" / id_dir(dag_id) / id_dir(run_id)


def current_launch(stream: Path) -> Path | None:
    """The control dir of the producer's newest launch in ``stream``, or None before the first."""
    try:
        name = os.readlink(stream / CURRENT_LINK)
    except OSError:
        return None
    if not name or "/" in name or name in {".", ".."}:
        return None  # not a link we made (ours name a sibling dir)
    return stream / name


def mark_failed_before_launch(runtime_root: Path, stream: Path, message: str, *, final: bool) -> None:
    """Tell the node tasks why the producer never launched (best effort: the failure is raised anyway).

    ``final``: Airflow will not retry the producer, so the node tasks end now; else they wait for the
    next try. ``message`` must already be redacted (the node tasks log it).
    """
    try:
        ensure_dir(secure_root(runtime_root), stream)
        fd, tmp = tempfile.mkstemp(dir=stream, prefix=".failed.")
        with os.fdopen(fd, "w") as fh:
            json.dump(early_failure_marker(message, final), fh)
        os.replace(tmp, stream / EARLY_FAILURE)
    except (OSError, DbtException):
        pass


def early_failure_marker(message: str, final: bool) -> dict[str, Any]:
    """What a producer that failed before launch leaves for its node tasks (on disk or in the store)."""
    return {"message": message, "final": final, "at": time.time()}


def clear_failed_before_launch(stream: Path) -> None:
    """A new try of the producer starts: an earlier try's early failure no longer holds."""
    try:
        (stream / EARLY_FAILURE).unlink()
    except OSError:
        pass


def failed_before_launch(stream: Path) -> dict[str, Any] | None:
    """What :func:`mark_failed_before_launch` wrote, or None."""
    try:
        marker = json.loads((stream / EARLY_FAILURE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def early_failure_message(producer_task_id: str, marker: dict[str, Any]) -> str:
    """The node task's error when its producer failed before it launched dbt."""
    return (f"The producer task {producer_task_id} failed before it started dbt, so no node was built: "
            f"{marker.get('message') or '(no message)'}")


def node_index_document(nodes: NodeIndex) -> dict[str, Any]:
    """The index a producer writes for its mapped node task: ``nodes[map index] = [unique id, tests]``."""
    return {"version": 1, "nodes": [[uid, list(tests)] for uid, tests in nodes]}


def index_rows(document: Any) -> NodeIndex | None:
    """The rows of a node index document, or None for anything else (a reader never trusts a file)."""
    rows = document.get("nodes") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        return None
    return [(str(row[0]), [str(t) for t in row[1]]) for row in rows
            if isinstance(row, list) and len(row) == 2 and isinstance(row[1], list)]


def node_result(event: dict[str, Any], clean: Callable[[str], str] | None = None) -> dict[str, Any] | None:
    """The compact result of one node from dbt's ``NodeFinished`` event, or None for other events.

    ``clean`` (the run's redaction) is applied to the message: it goes to a file, the trigger's log
    and the task's event, like any other line of dbt output.
    """
    info = event.get("info") or {}
    if info.get("name") != "NodeFinished":
        return None
    data = event.get("data") or {}
    node = data.get("node_info") or {}
    result = data.get("run_result") or {}
    uid = node.get("unique_id")
    if not uid:
        return None
    adapter = result.get("adapter_response") or {}
    message = str(result.get("message") or "")
    return {
        "unique_id": uid,
        "status": str(result.get("status") or node.get("node_status") or "").lower(),
        "message": clean(message) if clean is not None and message else message,
        "execution_time": float(result.get("execution_time") or 0.0),
        "rows_affected": adapter.get("rows_affected"),
        "failures": result.get("failures"),
        "path": node.get("node_path") or "",
        "relation": (node.get("node_relation") or {}).get("relation_name") or "",
        "started_at": node.get("node_started_at") or "",
        "finished_at": node.get("node_finished_at") or "",
    }


class NodeResultWriter:
    """Producer side: appends whole lines, so a reader never sees half a result."""

    def __init__(self, path: Path, clean: Callable[[str], str] | None = None) -> None:
        self.path = path
        self.clean = clean
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        row = node_result(event, self.clean)
        if row is None:
            return
        line = (json.dumps(row) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


class NodeTally:
    """Which nodes are running and how the finished ones ended, from dbt's ``NodeStart``/``NodeFinished``.

    The detached supervisor keeps it in its status file, so a watcher killed before dbt's own summary
    arrives can still say what had run and what was running.
    """

    MAX_FAILURES = 20

    def __init__(self, clean: Callable[[str], str] | None = None) -> None:
        self.clean = clean
        self._lock = threading.Lock()
        self._running: dict[str, None] = {}  # in start order
        self._counts: dict[str, int] = {}
        self._failures: list[dict[str, Any]] = []
        self.version = 0  # bumped on every change: the writer rewrites the status only then

    def __call__(self, event: dict[str, Any]) -> None:
        info = event.get("info") or {}
        if info.get("name") == "NodeStart":
            uid = ((event.get("data") or {}).get("node_info") or {}).get("unique_id")
            if uid:
                with self._lock:
                    self._running[str(uid)] = None
                    self.version += 1
            return
        row = node_result(event, self.clean)
        if row is None:
            return
        with self._lock:
            self._running.pop(row["unique_id"], None)
            self._counts[row["status"]] = self._counts.get(row["status"], 0) + 1
            if row["status"] in FAILED and len(self._failures) < self.MAX_FAILURES:
                self._failures.append({"unique_id": row["unique_id"], "status": row["status"],
                                       "message": str(row["message"])[:500]})
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"running": list(self._running), "counts": dict(self._counts),
                    "failures": list(self._failures)}


@dataclass
class StreamState:
    """What a watcher knows: each node's result so far and the producer's last status."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    seen: bool = False  # the producer's control dir has ever been visible
    # The control dir vanished after it was seen: a killed producer's supervisor removes it as it exits,
    # often before a watcher has read its last status.
    gone: bool = False
    early_failure: dict[str, Any] | None = None  # the producer failed before launching dbt (final try)
    # The launch's node index (map index -> unique id, tests), when its producer wrote one.
    index: NodeIndex | None = None
    # The channel's last error (an unreachable state store) and since when it has failed (epoch seconds).
    error: str | None = None
    failing_since: float | None = None

    @property
    def cancelled(self) -> bool:
        """The producer run was cancelled, is being cancelled, or was removed: no more nodes will come."""
        status = self.status or {}
        return self.gone or status.get("state") == "cancelled" or bool(status.get("cancel_requested"))


class NodeChannel(Protocol):
    """How watchers read a producer's results; one instance per producer run and reader."""

    def poll(self, state: StreamState) -> bool:
        """Fold what is new into ``state``; True when anything changed."""


class ControlDirChannel:
    """Tails ``nodes.jsonl`` and reads ``status.json`` of the newest launch in a stream dir
    (:func:`stream_dir`) on the shared runtime root."""

    def __init__(self, path: Path, gone_after: float = 2.0) -> None:
        self.path = path
        self.gone_after = gone_after  # a new try of the producer links a new launch: not gone at once
        self._offset = 0
        self._launch: Path | None = None
        self._missing_since: float | None = None

    def poll(self, state: StreamState) -> bool:
        launch = current_launch(self.path)
        status = self._status(launch)
        changed = False
        if launch is None:
            marker = failed_before_launch(self.path)
            early = marker if marker is not None and marker.get("final") else None
            if early != state.early_failure:
                state.early_failure, changed = early, True
        if status is None and state.seen and (launch is None or not launch.exists()):
            now = time.monotonic()
            self._missing_since = self._missing_since or now
            if not state.gone and now - self._missing_since >= self.gone_after:
                state.gone = changed = True
            return changed
        self._missing_since = None
        if isinstance(status, dict):
            state.seen, state.gone = True, False
            if launch != self._launch:  # a new try of the producer: start over
                self._launch, self._offset = launch, 0
                state.results.clear()
                state.index = read_node_index(launch) if launch is not None else None
                changed = True
            if status != state.status:
                state.status, changed = status, True
        if launch is None or launch != self._launch:
            return changed
        try:
            with (launch / NODE_RESULTS).open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return changed
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            state.results[str(row.get("unique_id"))] = row
            changed = True
        if end:
            # A cancel is marked in the status before dbt stops, so a node it cut short is written after
            # it: read the status again, or that node's error could pass for the node's own failure.
            again = self._status(launch)
            if isinstance(again, dict):
                state.status = again
        return changed

    @staticmethod
    def _status(launch: Path | None) -> dict[str, Any] | None:
        if launch is None:
            return None
        try:
            status = json.loads((launch / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None


def read_node_index(launch: Path) -> NodeIndex | None:
    """The node index of a launch's control dir, or None when it has none."""
    try:
        return index_rows(json.loads((launch / NODE_INDEX).read_text()))
    except (OSError, ValueError):
        return None


def write_node_index(launch: Path, nodes: NodeIndex) -> None:
    """Write the index into a launch's control dir (0600), before the launch is linked as current."""
    fd = os.open(launch / NODE_INDEX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(node_index_document(nodes), fh)
