"""DbtExecutionTrigger: watches one detached dbt run through its control dir, from the triggerer.

It reads only that run's own status file (never a shared target dir), relays progress lines to the
task log, enforces the task's timeout by asking the run to cancel, and cancels the run when a user
kills the deferred task. It looks at the status file's stamp every ``STATUS_POLL_SECONDS`` (one
``stat``), so the task resumes within about a second of dbt ending; the other checks run when the
status changes or every ``check_interval`` seconds. It needs the runtime root to be visible from the
triggerer (a shared volume, or one host); when it is not, it says so instead of waiting forever. With a
state store, it reads the run's mirror there instead (``core.store_control``), on any host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dlh_airflow_common.core.detached import (
    SUMMARY_PREFIX,
    TERMINAL,
    WATCHED_STAMP_SECONDS,
    ControlDir,
    partial_summary,
    whole_lines,
)
from dlh_airflow_common.core.store_control import StoreControl
from dlh_airflow_common.state_store import StoreSetting, open_store
from dlh_airflow_common.triggers.offloop import write_lines

STATUS_POLL_SECONDS = 0.5


class DbtExecutionTrigger(BaseTrigger):
    """Fires one event when the detached dbt run ends, times out, or can no longer be seen."""

    def __init__(
        self,
        control_dir: str,
        check_interval: float = 10.0,
        timeout_at: float | None = None,
        cancel_grace: float = 30.0,
        heartbeat_timeout: float = 120.0,
        visibility_timeout: float = 60.0,
        started_at: float | None = None,
        resume_not_before: float | None = None,
        progress_offset: int = 0,
        state_store: str | None = None,
        state_store_conn_id: str | None = None,
        store_key: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.control_dir = control_dir
        # Airflow 3.3.2 fails a task whose resumed try is queued before the scheduler has processed
        # the executor's "success" for the process that deferred (a race seen with a 4 s dbt run):
        # the event waits until a few seconds after the deferral, wall clock.
        self.resume_not_before = resume_not_before
        self.check_interval = check_interval
        self.timeout_at = timeout_at
        self.cancel_grace = cancel_grace
        self.heartbeat_timeout = heartbeat_timeout
        self.visibility_timeout = visibility_timeout
        self.started_at = started_at  # when the task started (wall clock): the resumed task's duration
        # How much of progress.log the task already relayed (it watched the run a while itself).
        self.progress_offset = progress_offset
        # A run mirrored to the state store (core.store_control): read there, never on the runtime root.
        self.state_store, self.state_store_conn_id = state_store, state_store_conn_id
        self.store_key = store_key
        self._stamped = -WATCHED_STAMP_SECONDS
        self._control: ControlDir | StoreControl | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "dlh_airflow_common.triggers.dbt.DbtExecutionTrigger",
            {
                "control_dir": self.control_dir,
                "check_interval": self.check_interval,
                "timeout_at": self.timeout_at,
                "cancel_grace": self.cancel_grace,
                "heartbeat_timeout": self.heartbeat_timeout,
                "visibility_timeout": self.visibility_timeout,
                "started_at": self.started_at,
                "resume_not_before": self.resume_not_before,
                "progress_offset": self.progress_offset,
                "state_store": self.state_store,
                "state_store_conn_id": self.state_store_conn_id,
                "store_key": self.store_key,
            },
        )

    @property
    def _ctl(self) -> ControlDir | StoreControl:
        if self._control is None:
            self._control = self._open()
        return self._control

    def _open(self) -> ControlDir | StoreControl:
        """The run's control files: its dir on the runtime root, or its objects in the state store."""
        if self.store_key and self.state_store:
            store = open_store(StoreSetting(self.state_store, self.state_store_conn_id))
            return StoreControl(store, tuple(self.store_key))
        return ControlDir(Path(self.control_dir))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._control = await asyncio.to_thread(self._open)  # a store lookup blocks: not on the loop
        async for event in self._watch():
            if self.resume_not_before is not None:
                await asyncio.sleep(max(0.0, self.resume_not_before - time.time()))
            yield event
            return

    async def _poll(self, seen: object, next_check: float) -> tuple[object, dict[str, Any] | None] | None:
        """The status's stamp and, when it changed or a check is due, the status (progress relayed)."""
        await self._still_watching()
        stamp = await asyncio.to_thread(self._ctl.status_stamp)
        if stamp == seen and time.monotonic() < next_check:
            return None
        status = await asyncio.to_thread(self._ctl.read_status)
        await self._relay_progress()
        return stamp, status

    async def _watch(self) -> AsyncIterator[TriggerEvent]:
        started = time.monotonic()
        ctl = self._ctl
        seen: object = None
        next_check = 0.0
        unreadable_since: float | None = None
        while True:
            try:
                polled = await self._poll(seen, next_check)
            except Exception as exc:  # the store is down or refuses: retried until heartbeat_timeout
                if not isinstance(ctl, StoreControl):
                    raise
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since > self.heartbeat_timeout:
                    yield self._store_lost(ctl, exc)
                    return
                await asyncio.sleep(STATUS_POLL_SECONDS * 4)
                continue
            unreadable_since = None
            if polled is None:
                await asyncio.sleep(STATUS_POLL_SECONDS)
                continue
            (seen, status), next_check = polled, time.monotonic() + self.check_interval
            if status is None:
                if time.monotonic() - started > self.visibility_timeout:
                    yield TriggerEvent({
                        "status": "error", "control_dir": self.control_dir, "started_at": self.started_at,
                        "message": (
                            f"The triggerer cannot see {ctl.path}/status.json. Deferrable dbt needs the "
                            "runtime root on a volume shared by workers and triggerers (or one host), or a "
                            "state store (state_store=s3://...); set one up or use deferrable=False."
                        ),
                    })
                    return
            elif status.get("state") in TERMINAL:
                yield self._event(status)
                return
            elif await asyncio.to_thread(ctl.supervisor_gone, status):
                await asyncio.sleep(1)  # it may have written its final status just before exiting
                final = await asyncio.to_thread(ctl.read_status) or status
                if final.get("state") in TERMINAL:
                    yield self._event(final)
                    return
                pid = status.get("pid")
                yield await self._error(f"The dbt supervisor (pid {pid}) exited without a result.")
                return
            elif time.time() - float(status.get("heartbeat") or 0) > self.heartbeat_timeout:
                yield await self._error(
                    f"The dbt run on host {status.get('host')} (pid {status.get('pid')}) stopped reporting "
                    f"for over {self.heartbeat_timeout:.0f}s: its worker was probably lost (a deleted pod, "
                    "a restarted machine).")
                return
            if self.timeout_at is not None and time.time() > self.timeout_at:
                yield await self._timed_out()
                return
            await asyncio.sleep(STATUS_POLL_SECONDS)

    async def _still_watching(self) -> None:
        if time.monotonic() - self._stamped >= WATCHED_STAMP_SECONDS:
            self._stamped = time.monotonic()
            await asyncio.to_thread(self._ctl.mark_watched)

    async def _relay_progress(self) -> None:
        lines, self.progress_offset = await asyncio.to_thread(self._ctl.progress_since, self.progress_offset)
        await write_lines(self.log, [("info", line) for line in lines])

    async def _error(self, message: str) -> TriggerEvent:
        tail = await asyncio.to_thread(self._ctl.progress_tail)
        if tail:
            message += f"\n--- last output of the run ---\n{tail}"
        return TriggerEvent({"status": "error", "control_dir": self.control_dir, "message": message,
                             "started_at": self.started_at})

    def _store_lost(self, ctl: StoreControl, exc: Exception) -> TriggerEvent:
        """The run cannot be watched any more; unwatched, its supervisor stops dbt by itself."""
        message = (f"The state store {ctl.path} could not be read for over {self.heartbeat_timeout:.0f}s "
                   f"({type(exc).__name__}: {exc}). Check that the endpoint is up and the connection's "
                   "credentials are valid. The dbt run stops by itself once unwatched_timeout passes "
                   "without this trigger.")
        return TriggerEvent({"status": "error", "control_dir": self.control_dir, "message": message,
                             "started_at": self.started_at})

    def _event(self, status: dict[str, Any], state: str | None = None) -> TriggerEvent:
        outcome = self._ctl.outcome(status, self.started_at, state)
        if isinstance(self._ctl, StoreControl):  # for a resume on the launching host: its local dir
            outcome["local_dir"] = self.control_dir
        return TriggerEvent(outcome)

    async def _cancel_and_wait(self) -> dict[str, Any] | None:
        ctl = self._ctl
        await asyncio.to_thread(ctl.request_cancel)
        deadline = time.monotonic() + self.cancel_grace + 15
        while time.monotonic() < deadline:
            await self._still_watching()
            status = await asyncio.to_thread(ctl.read_status)
            await self._relay_progress()
            if status and status.get("state") in TERMINAL:
                return status
            await asyncio.sleep(0.5)
        return await asyncio.to_thread(ctl.read_status)

    async def _timed_out(self) -> TriggerEvent:
        await write_lines(self.log, [("warning", "dbt run exceeded its timeout; asking it to cancel")])
        status = await self._cancel_and_wait() or {}
        return self._event(status, state="timeout")

    async def on_kill(self) -> None:
        """The user killed the deferred task: stop dbt too, wherever it runs, within the triggerer's limit.

        The triggerer waits at most ``[triggerer] on_kill_timeout`` (30 s) for this, and in Airflow 3.3
        re-sends its cancel at every sync (about a second) until this returns, so this asks for the
        cancel first, then relays dbt's last lines for as long as it is let. When dbt's own summary
        has not come by then, it logs one from what the supervisor last recorded (nodes finished,
        nodes running). The supervisor does the rest whatever happens: SIGINT, ``cancel_grace``,
        SIGKILL, its run dir, and this control dir, as no task will resume.
        """
        await write_lines(self.log, [("warning", "Deferred dbt task killed; asking the dbt run to cancel")])
        if self.store_key:
            await self._on_kill_in_store()
            return
        ctl = ControlDir(Path(self.control_dir))
        try:  # opened first: the supervisor removes the dir (and the file's name) as it exits
            progress = await asyncio.to_thread(ctl.progress.open, "rb")
        except OSError:
            progress = None
        last: dict[str, Any] = {}
        summarised = False

        async def relay() -> None:
            nonlocal summarised
            lines = list(whole_lines(progress))  # read in this thread: a cancel leaves no reader behind
            summarised = summarised or any(line.startswith(SUMMARY_PREFIX) for line in lines)
            await write_lines(self.log, [("info", line) for line in lines])

        try:
            if progress is not None:
                progress.seek(self.progress_offset)
            first = await asyncio.to_thread(ctl.read_status)
            last = first or {}
            await asyncio.to_thread(ctl.abandon)
            deadline = time.monotonic() + min(self.cancel_grace + 5, _on_kill_budget())
            while True:
                status = await asyncio.to_thread(ctl.read_status)
                last = status or last
                await relay()
                if status is None or status.get("state") in TERMINAL or time.monotonic() > deadline:
                    return
                await asyncio.sleep(STATUS_POLL_SECONDS)
        finally:  # also when the triggerer cancels this: a few small reads, then the log lines
            try:
                await relay()
                if not summarised and last:
                    await write_lines(self.log, [
                        ("warning", "dbt's own summary has not arrived yet; what the run had reported "
                                    "when it was killed:"),
                        *(("warning", line) for line in partial_summary(last))])
            finally:
                if progress is not None:
                    progress.close()


    async def _on_kill_in_store(self) -> None:
        """``on_kill`` for a run watched through the state store: abandon it, relay its last lines."""
        if self._control is None:
            self._control = await asyncio.to_thread(self._open)
        ctl = self._control
        last: dict[str, Any] = {}
        summarised = False
        try:
            first = await asyncio.to_thread(ctl.read_status)
            last = first or {}
            await asyncio.to_thread(ctl.abandon)
            deadline = time.monotonic() + min(self.cancel_grace + 5, _on_kill_budget())
            while time.monotonic() < deadline:
                status = await asyncio.to_thread(ctl.read_status)
                last = status or last
                lines, self.progress_offset = await asyncio.to_thread(ctl.progress_since,
                                                                      self.progress_offset)
                summarised = summarised or any(line.startswith(SUMMARY_PREFIX) for line in lines)
                await write_lines(self.log, [("info", line) for line in lines])
                if status is None or status.get("state") in TERMINAL:
                    return
                await asyncio.sleep(1.0)
        finally:
            if not summarised and last:
                await write_lines(self.log, [
                    ("warning", "dbt's own summary has not arrived yet; what the run had reported when it "
                                "was killed:"), *(("warning", line) for line in partial_summary(last))])


def _on_kill_budget() -> float:
    """Seconds ``on_kill`` may spend: the triggerer's own limit for it, less a margin."""
    from dlh_airflow_common._compat import conf

    return max(0.0, conf.getfloat("triggerer", "on_kill_timeout", fallback=30) - 5)

