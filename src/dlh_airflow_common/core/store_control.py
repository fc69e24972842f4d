"""A deferred run's control dir, mirrored to the state store for watchers on other hosts.

The supervisor keeps its control dir on its own host (``core.detached``) and a :class:`ControlMirror`
copies what watchers read up to ``deferred/<launch>/`` in the store, and what they write down:

    status.json        the local status, pushed when it changes (at most once a second), with the number
                       of progress objects written before it (``progress_objects``)
    heartbeat          the time, every ``HEARTBEAT_SECONDS``
    progress/<n>.log   new whole progress lines, at most one object a second
    artifacts/<name>   the run's artifacts, pushed before the final status
    cancel, abandoned  written by a watcher; the mirror creates the local flags (the supervisor acts)
    watched            rewritten by the trigger; the mirror re-stamps the local flag when it changes

:class:`StoreControl` is the watcher's side, with the methods of ``ControlDir`` that the trigger and
the resumed task use.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.artifacts import ARTIFACTS, DOCS_PAGES
from dlh_airflow_common.core.detached import TERMINAL, ControlDir
from dlh_airflow_common.core.safefs import touch
from dlh_airflow_common.core.store import StateStore

STATUS, HEARTBEAT, PROGRESS, ARTIFACTS_DIR = "status.json", "heartbeat", "progress", "artifacts"
CANCEL, ABANDONED, WATCHED = "cancel", "abandoned", "watched"
PUSH_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0
FLAGS_SECONDS = 2.0  # how often the supervisor lists for cancel/abandoned/watched
LIST_SECONDS = 1.0  # how often a watcher lists at most


def control_key(launch: str) -> tuple[str, ...]:
    return ("deferred", launch)


class ControlMirror:
    """Supervisor side: local control files up to the store, watchers' flags down from it."""

    def __init__(self, store: StateStore, key: tuple[str, ...], ctl: ControlDir) -> None:
        self.store, self.key, self.ctl = store, key, ctl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0
        self._pushed = 0  # progress objects written
        self._stamp: tuple[int, int, int] | None = None
        self._watched: str | None = None
        self._failing = False

    def start(self) -> None:
        self._push_status()
        self._thread = threading.Thread(target=self._run, name="dlh-control-mirror", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pushed = beat = flags = 0.0
        while not self._stop.wait(0.25):
            now = time.monotonic()
            try:
                if now - pushed >= PUSH_SECONDS:
                    pushed = now
                    self._push_progress()
                    if self.ctl.status_stamp() != self._stamp:
                        self._push_status()
                if now - beat >= HEARTBEAT_SECONDS:
                    beat = now
                    self.store.put(str(time.time()).encode(), *self.key, HEARTBEAT)
                if now - flags >= FLAGS_SECONDS:
                    flags = now
                    self._pull_flags()
                if self._failing:
                    self._failing = False
                    print("State store reachable again from the dbt supervisor", flush=True)
            except Exception as exc:
                # The watchers' heartbeat check reports it; and with no `watched` stamp coming through, the
                # supervisor stops dbt after unwatched_timeout: never unwatched for longer than that.
                if not self._failing:
                    self._failing = True
                    print(f"State store unreachable from the dbt supervisor: {exc}", flush=True)

    def _pull_flags(self) -> None:
        names = self.store.listing(*self.key)
        if ABANDONED in names:
            touch(self.ctl.abandoned_flag)
        if CANCEL in names:
            touch(self.ctl.cancel_flag)
        if names.get(WATCHED) not in (None, self._watched):
            self._watched = names[WATCHED]
            touch(self.ctl.watched_flag)  # stamped by this host's clock: no skew in unwatched_timeout

    def _push_progress(self) -> None:
        try:
            with self.ctl.progress.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        if end:
            self.store.put(data[:end], *self.key, PROGRESS, f"{self._pushed + 1:06d}.log")
            self._pushed += 1
            self._offset += end

    def _push_status(self, final: bool = False) -> None:
        self._stamp = self.ctl.status_stamp()
        status = self.ctl.read_status()
        if status is not None:
            extra = {"store_requests": self.store.request_counts()} if final else {}
            self.store.put_json({**status, "progress_objects": self._pushed, **extra}, *self.key, STATUS)

    @property
    def watched(self) -> bool:
        """A trigger has watched through the store: the task resumes from there, not from this dir."""
        return self._watched is not None

    def close(self) -> None:
        """After dbt: the last progress, the artifacts, then the final status (or nothing, if abandoned)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.ctl.abandoned_flag.exists():  # no task will resume: nothing to keep
            self.store.remove(*self.key)
            return
        self._push_progress()
        for name in (*ARTIFACTS, *DOCS_PAGES):
            path = self.ctl.artifacts / name
            if path.is_file():
                self.store.put(path.read_bytes(), *self.key, ARTIFACTS_DIR, name)
        self._push_status(final=True)


class StoreControl:
    """Watcher side: a deferred run's control files in the store, as ``ControlDir`` offers them locally."""

    def __init__(self, store: StateStore, key: tuple[str, ...]) -> None:
        self.store, self.key = store, tuple(key)
        self._objects: dict[str, str] = {}
        self._listed = -LIST_SECONDS
        self._status: dict[str, Any] | None = None
        self._status_tag: str | None = None
        self._beat = 0.0
        self._beat_tag: str | None = None

    @property
    def path(self) -> str:
        return f"{self.store.url}/{'/'.join(self.key)}"

    def _list(self, fresh: bool = False) -> dict[str, str]:
        if fresh or time.monotonic() - self._listed >= LIST_SECONDS:
            self._objects, self._listed = self.store.listing(*self.key), time.monotonic()
        return self._objects

    def status_stamp(self) -> tuple[str | None, int] | None:
        objects = self._list()
        if STATUS not in objects:
            return None
        return objects[STATUS], sum(k.startswith(PROGRESS + "/") for k in objects)

    def read_status(self) -> dict[str, Any] | None:
        objects = self._list()
        if STATUS not in objects:
            return None
        if objects[STATUS] != self._status_tag:
            status = self.store.get_json(*self.key, STATUS)
            if isinstance(status, dict):
                self._status, self._status_tag = status, objects[STATUS]
        if objects.get(HEARTBEAT) not in (None, self._beat_tag):
            try:
                self._beat = float(self.store.get(*self.key, HEARTBEAT) or 0)
            except ValueError:
                pass
            self._beat_tag = objects[HEARTBEAT]
        if self._status is None:
            return None
        return {**self._status, "heartbeat": max(float(self._status.get("heartbeat") or 0), self._beat)}

    def progress_since(self, offset: int) -> tuple[list[str], int]:
        """The lines of the progress objects after the first ``offset`` of them, and the new offset."""
        names = sorted(k for k in self._list() if k.startswith(PROGRESS + "/"))
        lines: list[str] = []
        for name in names[offset:]:
            data = self.store.get(*self.key, name)
            if data is None:
                break
            lines += [line for line in data.decode(errors="replace").splitlines() if line.strip()]
            offset += 1
        return lines, offset

    def progress_tail(self, lines: int = 30) -> str:
        names = sorted(k for k in self._list(fresh=True) if k.startswith(PROGRESS + "/"))
        text = b"".join(self.store.get(*self.key, n) or b"" for n in names[-3:])
        return "\n".join(text.decode(errors="replace").splitlines()[-lines:])

    def mark_watched(self) -> None:
        try:
            self.store.put(str(time.time()).encode(), *self.key, WATCHED)
        except Exception:
            return  # the store is down: the heartbeat check reports it

    def request_cancel(self) -> None:
        self.store.put(b"", *self.key, CANCEL)

    def abandon(self) -> None:
        """Cancel a run no task will resume; its supervisor removes its objects once dbt has stopped."""
        self.store.put(b"", *self.key, ABANDONED)
        self.request_cancel()
        status = self.read_status()
        if status is None or status.get("state") in TERMINAL:
            self.remove()

    def supervisor_gone(self, _status: dict[str, Any]) -> bool:
        return False  # another host: only the heartbeat can tell

    def outcome(self, status: dict[str, Any], started_at: float | None,
                state: str | None = None) -> dict[str, Any]:
        return {"status": state or status.get("state"), "control_dir": self.path, "store_key": list(self.key),
                "result": status.get("result"), "error": status.get("error"), "host": status.get("host"),
                "started_at": started_at, "store_requests": {"supervisor": status.get("store_requests"),
                                                             "trigger": self.store.request_counts()}}

    def fetch_artifacts(self, dest: Path) -> Path:
        """The run's artifacts, copied into ``dest`` (for the resumed task's report)."""
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in self.store.listing(*self.key, ARTIFACTS_DIR):
            data = self.store.get(*self.key, ARTIFACTS_DIR, name)
            if data is not None and "/" not in name:
                (dest / name).write_bytes(data)
        return dest

    def remove(self) -> None:
        self.store.remove(*self.key)
