"""Streamed per-node results through the state store (``core.store``), for hosts that share no volume.

Object stores have no append and bill per request, so the producer writes, under its launch's
prefix ``streams/<dag>/<run>/<launch>/``:

    nodes/<seq>.jsonl   a new object per batch of finished nodes, at most one a second while dbt runs
    status.json         state, host, pid, cancel mark, result; rewritten on change, and counts the
                        batches written before it (``batches``) so a reader never takes a final status
                        before the results that came with it
    heartbeat           the time, every ``HEARTBEAT_SECONDS``
    node_index.json     for a mapped node task: map index -> node and its tests, written once, first

A producer that fails before it launches dbt writes ``early/failed_before_launch.json`` under the
run's prefix instead (the store twin of ``stream.mark_failed_before_launch``).

Launch names sort by start time: readers follow the newest launch of the run, as ``current`` does on
disk. A reader lists the run's prefix once per poll and gets only what is new or changed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dlh_airflow_common.core.names import id_dir
from dlh_airflow_common.core.store import StateStore
from dlh_airflow_common.core.stream import (
    EARLY_FAILURE,
    NODE_INDEX,
    NodeIndex,
    NodeTally,
    StreamState,
    early_failure_marker,
    index_rows,
    node_index_document,
    node_result,
)

BATCH_SECONDS = 1.0  # at most one node batch object a second
HEARTBEAT_SECONDS = 5.0
TALLY_SECONDS = 5.0  # the running/finished tally in the status: at most this often
STATUS, HEARTBEAT, NODES = "status.json", "heartbeat", "nodes"
# A producer that failed before it launched dbt writes ``<run>/early/failed_before_launch.json``: a
# launch name with no status (never followed), so store retention prunes it like a launch.
EARLY = "early"
EARLY_KEY = f"{EARLY}/{EARLY_FAILURE}"
TERMINAL = {"success", "failed", "cancelled"}


def stream_key(dag_id: str, run_id: str) -> tuple[str, ...]:
    """The store prefix of one DAG run's producer launches (the store twin of ``stream.stream_dir``)."""
    return ("streams", id_dir(dag_id), id_dir(run_id))


def new_launch_name() -> str:
    """Sorts by start time (newest last), unique across hosts."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def mark_failed_before_launch_in_store(store: StateStore, run: tuple[str, ...], message: str, *,
                                       final: bool) -> None:
    """Tell the run's node tasks, through the store, why the producer never launched (may raise)."""
    store.put_json(early_failure_marker(message, final), *run, EARLY, EARLY_FAILURE)


def clear_failed_before_launch_in_store(store: StateStore, run: tuple[str, ...]) -> None:
    """A new try of the producer starts: an earlier try's early failure no longer holds (may raise)."""
    store.remove(*run, EARLY)


class StoreStreamWriter:
    """Producer side: buffers dbt's ``NodeFinished`` results and writes them as batch objects.

    Call it with every dbt event; :meth:`start` begins the background writes, :meth:`close` flushes
    the last batch and then writes the final status. ``on_lost`` is called once when the store has
    refused every write for ``lost_after`` seconds (the supervisor then stops dbt: nobody can watch it).
    """

    def __init__(self, store: StateStore, prefix: tuple[str, ...], clean: Callable[[str], str] | None = None,
                 on_lost: Callable[[str], None] | None = None, lost_after: float = 60.0) -> None:
        self.store, self.prefix, self.clean = store, prefix, clean
        self.tally = NodeTally(clean)
        self.on_lost, self.lost_after = on_lost, lost_after
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._status: dict[str, Any] = {}
        self._status_dirty = False
        self._batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self.last_error: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        self.tally(event)
        row = node_result(event, self.clean)
        if row is not None:
            with self._lock:
                self._rows.append(row)

    def start(self, index: NodeIndex | None = None, **fields: Any) -> None:
        """Write the node index (if any) and the first status now (the task-start check of a producer),
        then write in the background. The index goes first: a reader that sees the launch sees it."""
        if index is not None:
            self.store.put_json(node_index_document(index), *self.prefix, NODE_INDEX)
        self._status = {"state": "running", "host": socket.gethostname(), "launched": time.time(),
                        "heartbeat": time.time(), **fields, "batches": 0}
        self.store.put_json(self._status, *self.prefix, STATUS)
        self.store.put(str(time.time()).encode(), *self.prefix, HEARTBEAT)
        self._thread = threading.Thread(target=self._run, name="dlh-store-writer", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        """Merge into the status; written with the next background write."""
        with self._lock:
            self._status.update(fields)
            self._status_dirty = True

    def mark_now(self, **fields: Any) -> None:
        """Merge into the status and write it now, after any pending results (e.g. a cancel request)."""
        self.update(**fields)
        self._flush(force_status=True)

    def close(self, **final: Any) -> None:
        """Stop the background writes, write the last batch, then the final status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.update(**final, nodes=self.tally.snapshot(), finished=time.time())
        self._flush(force_status=True)

    def _run(self) -> None:
        beat = batch = tally_at = time.monotonic()
        tally_seen = self.tally.version
        while not self._stop.wait(0.2):
            now = time.monotonic()
            try:
                if now - batch >= BATCH_SECONDS and self._pending():
                    batch = now
                    self._flush(force_status=False)
                if self.tally.version != tally_seen and now - tally_at >= TALLY_SECONDS:
                    tally_seen, tally_at = self.tally.version, now
                    self.update(nodes=self.tally.snapshot())
                if self._status_dirty:
                    self._flush(force_status=True)
                if now - beat >= HEARTBEAT_SECONDS:
                    beat = now
                    self.store.put(str(time.time()).encode(), *self.prefix, HEARTBEAT)
                self._failing_since = None
            except Exception as exc:
                self.last_error = str(exc)
                self._failing_since = self._failing_since or now
                if self.on_lost is not None and now - self._failing_since >= self.lost_after:
                    self.on_lost(f"the state store refused every write for {self.lost_after:.0f}s: "
                                 f"{self.last_error}")
                    self.on_lost = None

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._rows)

    def _flush(self, force_status: bool) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            try:
                self.store.put("".join(json.dumps(r) + "\n" for r in rows).encode(),
                               *self.prefix, NODES, f"{self._batches + 1:06d}.jsonl")
            except Exception:
                with self._lock:
                    self._rows[:0] = rows  # written with the next batch
                raise
            self._batches += 1
            self.update(batches=self._batches)
        if force_status and self._status_dirty:
            with self._lock:
                status, self._status_dirty = {**self._status, "batches": self._batches}, False
            self.store.put_json(status, *self.prefix, STATUS)


class StoreChannel:
    """Watcher side of one DAG run's stream in the store (a :class:`core.stream.NodeChannel`).

    Each poll lists the run's prefix once, then gets only the new batches and a changed status or
    heartbeat. The status's ``heartbeat`` is the newer of its own and the heartbeat object's time.
    """

    def __init__(self, store: StateStore, prefix: tuple[str, ...], gone_after: float = 2.0) -> None:
        self.store, self.prefix, self.gone_after = store, prefix, gone_after
        self._launch: str | None = None
        self._read: set[str] = set()
        self._tags: dict[str, str] = {}
        self._status: dict[str, Any] | None = None
        self._beat = 0.0
        self._missing_since: float | None = None
        self._early_tag = ""

    def poll(self, state: StreamState) -> bool:
        objects = self.store.listing(*self.prefix)
        launches = sorted({key.split("/", 1)[0] for key in objects if key.endswith("/" + STATUS)})
        if not launches:
            changed = self._fold_early_failure(state, objects.get(EARLY_KEY, ""))
            if state.seen:
                now = time.monotonic()
                self._missing_since = self._missing_since or now
                if not state.gone and now - self._missing_since >= self.gone_after:
                    state.gone = True
                    return True
            return changed
        self._missing_since = None
        launch, changed = launches[-1], False
        if launch != self._launch:  # a new try of the producer: start over
            self._launch, self._read, self._tags, self._status, self._beat = launch, set(), {}, None, 0.0
            state.results.clear()
            state.index = index_rows(self.store.get_json(*self.prefix, launch, NODE_INDEX)) \
                if f"{launch}/{NODE_INDEX}" in objects else None
            changed = True
        mine = {k[len(launch) + 1:]: tag for k, tag in objects.items() if k.startswith(launch + "/")}
        new = sorted(k for k in mine if k.startswith(NODES + "/") and k not in self._read)
        for key in new:
            changed = self._fold_batch(state, launch, key) or changed
        if mine.get(HEARTBEAT) != self._tags.get(HEARTBEAT):
            beat = self.store.get(*self.prefix, launch, HEARTBEAT)
            self._tags[HEARTBEAT] = mine.get(HEARTBEAT, "")
            try:
                self._beat = float(beat or 0)
            except ValueError:
                pass
        # After new results, always read the status again: a cancel is marked before dbt stops, so a node
        # it cut short comes after that mark, and must not pass for the node's own failure.
        if new or mine.get(STATUS) != self._tags.get(STATUS):
            status = self.store.get_json(*self.prefix, launch, STATUS)
            self._tags[STATUS] = mine.get(STATUS, "")
            if isinstance(status, dict):
                if int(status.get("batches") or 0) > len(self._read):
                    self._tags.pop(STATUS, None)  # results not read yet: take this status next poll
                else:
                    self._status = status
        if self._status is not None:
            status = {**self._status, "heartbeat": max(float(self._status.get("heartbeat") or 0), self._beat)}
            if status != state.status:
                state.status, changed = status, True
            if not state.seen or state.gone:
                state.seen, state.gone, changed = True, False, True
        return changed

    def _fold_early_failure(self, state: StreamState, tag: str) -> bool:
        """The producer's early failure (final try only), read again only when its object changed."""
        if tag == self._early_tag:
            return False
        self._early_tag = tag
        marker = self.store.get_json(*self.prefix, EARLY, EARLY_FAILURE) if tag else None
        early = marker if isinstance(marker, dict) and marker.get("final") else None
        if early == state.early_failure:
            return False
        state.early_failure = early
        return True

    def _fold_batch(self, state: StreamState, launch: str, key: str) -> bool:
        data = self.store.get(*self.prefix, launch, key)
        if data is None:
            return False
        self._read.add(key)
        for line in data.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            state.results[str(row.get("unique_id"))] = row
        return True
