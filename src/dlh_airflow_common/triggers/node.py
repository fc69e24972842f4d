"""DbtNodeTrigger: one node task of a streamed per-node DAG, reflecting its node's result in the producer run.

The task is born here (``start_from_trigger``) and, when the producer is healthy, ends here too
(success, failed or skipped events end it without a worker). It finds its DAG run's producer from
its own task instance (dag id, run id), so no per-run value has to be rendered into the task.
Hundreds of node triggers of one run share one reader of that run's stream per triggerer process.

When the node was not built in this producer run (not selected, or this is a retry / a clear of
the task), the trigger resumes the task on a worker, which then builds the node itself.

A map index of the mapped node task is born with no node in its arguments (Airflow starts every
index with the same ones): its trigger reads its node from the node index the producer wrote into
its launch, at its own map index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from airflow.triggers.base import (
    BaseTrigger,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)

from dlh_airflow_common.core.store_stream import StoreChannel, stream_key
from dlh_airflow_common.core.stream import (
    GOOD,
    ControlDirChannel,
    NodeChannel,
    StreamState,
    current_launch,
    early_failure_message,
    stream_dir,
)
from dlh_airflow_common.naming import mapped_node
from dlh_airflow_common.state_store import StoreSetting, open_store
from dlh_airflow_common.triggers.offloop import (
    DELIVERY_TIMEOUT,
    Line,
    logs_delivered,
    run_off_loop,
    write_lines,
)

TERMINAL = {"success", "failed", "cancelled"}
STORE_POLL_SECONDS = 1.0


class _SharedReader:
    """One poller of one producer's stream (control dir or state store), shared by every trigger of that
    run in this process."""

    readers: dict[str, _SharedReader] = {}

    def __init__(self, key: str, make: Callable[[], NodeChannel], interval: float) -> None:
        self.key, self.make = key, make
        self.channel: NodeChannel | None = None  # made on the poll thread: opening a store blocks
        # The poll runs in a thread of its own (``offloop``): it folds into a private state, and triggers
        # (on the event loop) only see whole snapshots, so none reads a "finished" status before the
        # results that came with it.
        self._polled = StreamState()
        self.state = StreamState()
        self.interval = interval
        self.users = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def attach(cls, key: str, make: Callable[[], NodeChannel], interval: float) -> _SharedReader:
        reader = cls.readers.get(key)
        if reader is None:
            reader = cls.readers[key] = cls(key, make, interval)
        reader.users += 1
        if reader.task is None or reader.task.done():
            reader.task = asyncio.get_running_loop().create_task(reader._loop())
        return reader

    def detach(self) -> dict[str, int] | None:
        """Let go; the last user gets the store's request counts of this reader (None on disk)."""
        self.users -= 1
        if self.users > 0:
            return None
        self.readers.pop(self.key, None)
        if self.task is not None:
            self.task.cancel()
        return self.channel.store.request_counts() if isinstance(self.channel, StoreChannel) else None

    def _poll(self, state: StreamState) -> bool:
        """One poll; a failing store is recorded in the state (the triggers give up after a bounded time)."""
        try:
            if self.channel is None:
                self.channel = self.make()
            changed = self.channel.poll(state)
        except Exception as exc:
            state.failing_since = state.failing_since or time.time()
            changed, state.error = state.error != str(exc), str(exc)
            return changed
        if state.error is not None:
            state.error, state.failing_since, changed = None, None, True
        return changed

    async def _loop(self) -> None:
        while self.users > 0:
            if await run_off_loop("stream-poll", self._poll, self._polled):
                polled = self._polled
                self.state = replace(polled, results=dict(polled.results))  # every field, a copy
                self.changed.set()
                self.changed = asyncio.Event()
            await asyncio.sleep(self.interval)

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            pass


class DbtNodeTrigger(BaseTrigger):
    """Waits for one node (and the tests that run with it) in its DAG run's producer stream."""

    def __init__(
        self,
        unique_id: str | None = None,  # None: a map index of the mapped node task (see module doc)
        runtime_root: str = "",
        tests: list[str] | None = None,
        producer_task_id: str = "dbt_producer",
        end_task: bool = True,
        dag_id: str | None = None,
        run_id: str | None = None,
        try_number: int | None = None,
        poll_interval: float = 0.5,
        heartbeat_timeout: float = 120.0,
        start_timeout: float = 600.0,
        state_store: str | None = None,
        state_store_conn_id: str | None = None,
        docs_page: str | None = None,
    ) -> None:
        super().__init__()
        self.unique_id = unique_id
        self.runtime_root = runtime_root
        self.tests = list(tests or [])
        self.producer_task_id = producer_task_id
        self.end_task = end_task  # born in the triggerer: end the task here; else resume the worker
        self.dag_id, self.run_id, self.try_number = dag_id, run_id, try_number
        self.poll_interval = poll_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.start_timeout = start_timeout
        self.state_store, self.state_store_conn_id = state_store, state_store_conn_id
        self.docs_page = docs_page  # the project's docs link (links.project_page): the node's link is sent
        self._lines: list[Line] = []  # queued by the decision, written by _flush_log
        self._map_index = -1

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("dlh_airflow_common.triggers.node.DbtNodeTrigger", {
            "unique_id": self.unique_id, "runtime_root": self.runtime_root, "tests": self.tests,
            "producer_task_id": self.producer_task_id, "end_task": self.end_task, "dag_id": self.dag_id,
            "run_id": self.run_id, "try_number": self.try_number, "poll_interval": self.poll_interval,
            "heartbeat_timeout": self.heartbeat_timeout, "start_timeout": self.start_timeout,
            "state_store": self.state_store, "state_store_conn_id": self.state_store_conn_id,
            "docs_page": self.docs_page,
        })

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render; drop this trigger's copy of the whole DAG instead.

        For a task started in the triggerer, Airflow 3.3 deserializes the whole DAG per trigger to build
        the task instance and the context it passes here, and keeps both for the trigger's lifetime: N
        node triggers would hold N copies of an N-task DAG (1.4 GB at 500 nodes). The trigger only
        needs the task instance's ids, so it lets go of the context's entries and of the task (whose
        ``dag`` is that copy) before it starts waiting.
        """
        if isinstance(context, dict):
            context.clear()
        ti = self.task_instance
        if ti is not None and getattr(ti, "task", None) is not None:
            object.__setattr__(ti, "task", None)  # a pydantic model: no validation of a release

    def _run_identity(self) -> tuple[str, str, int]:
        ti = self.task_instance
        dag_id = self.dag_id or getattr(ti, "dag_id", None)
        run_id = self.run_id or getattr(ti, "run_id", None)
        if not dag_id or not run_id:
            raise RuntimeError("DbtNodeTrigger needs its task instance (dag id, run id) to find its producer")
        return str(dag_id), str(run_id), int(self.try_number or getattr(ti, "try_number", 1) or 1)

    def _label(self) -> str:
        return self.unique_id or f"the node at map index {self._map_index}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        dag_id, run_id, try_number = self._run_identity()
        if self.unique_id is None:
            self._map_index = mapped_node(self.task_instance)[0]
            if self._map_index < 0:
                raise RuntimeError("DbtNodeTrigger needs unique_id, or a task instance of a mapped node task")
        path = stream_dir(Path(self.runtime_root), dag_id, run_id)
        if try_number > 1:
            resume = self._resume("run_itself", f"try {try_number}: this task builds {self._label()} itself")
            await self._flush_log(final=True)
            yield resume
            return
        reader = self._attach(path, dag_id, run_id)
        started = time.monotonic()
        counts = None
        try:
            while True:
                event = None
                try:
                    event = self._decide(reader.state, path, started)
                finally:  # also the lines queued before a bad row raised
                    await self._flush_log(final=event is not None)
                if event is not None:
                    yield event
                    return
                await reader.wait(max(self.poll_interval * 4, 1.0))
        finally:
            counts = reader.detach()
            if counts:
                line = f"State store requests of this run's reader: {counts}"
                await write_lines(self.log, [("info", line)])

    def _attach(self, path: Path, dag_id: str, run_id: str) -> _SharedReader:
        if not self.state_store:
            return _SharedReader.attach(str(path), lambda: ControlDirChannel(path), self.poll_interval)
        setting = StoreSetting(self.state_store, self.state_store_conn_id)
        prefix = stream_key(dag_id, run_id)
        # A store bills per request: one list a second per run is enough (results arrive in 1 s batches).
        return _SharedReader.attach(f"{setting.url}|{'/'.join(prefix)}",
                                    lambda: StoreChannel(open_store(setting), prefix),
                                    max(self.poll_interval, STORE_POLL_SECONDS))

    def _bind(self, state: StreamState) -> TriggerEvent | None:
        """A map index's node, from the launch's node index once the launch is seen; an error event when
        the producer wrote none or too short a one."""
        if self.unique_id is not None or not state.seen:
            return None
        if state.index is None:
            return self._end("failed", f"The producer task {self.producer_task_id} launched dbt without a "
                             "node index, so this map index cannot tell its node: its worker parsed a DAG "
                             "file that does not render node_layout='mapped' (another version of it?). Clear "
                             "this task to build its node on a worker")
        if self._map_index >= len(state.index):
            return self._end("failed", f"Map index {self._map_index} is beyond the producer's node index "
                             f"({len(state.index)} nodes): the DAG file changed between the scheduler's "
                             "parse and the producer's. Clear this task to build its node on a worker")
        self.unique_id, self.tests = state.index[self._map_index]
        self._lines.append(("info", f"Map index {self._map_index} is {self.unique_id}"))
        return None

    def _decide(self, state: StreamState, path: Path, started: float) -> TriggerEvent | None:
        """The task's outcome once the stream tells it, else None (keep waiting)."""
        unbound = self._bind(state)
        if unbound is not None:
            return unbound
        status = state.status or {}
        finished = status.get("state") in TERMINAL
        node = state.results.get(self.unique_id) if self.unique_id else None
        tests = [state.results[t] for t in self.tests if t in state.results]
        failing = time.time() - (state.failing_since or time.time())
        if state.error is not None and failing > self.heartbeat_timeout:
            return self._end("failed", f"The producer's stream cannot be read for over "
                             f"{self.heartbeat_timeout:.0f}s: {state.error}")
        if node is not None and (len(tests) == len(self.tests) or finished):
            if state.cancelled and node["status"] not in GOOD and node["status"] != "skipped":
                self._log_result(node)  # dbt's error here is the cancel's doing, not the node's
                return self._cancelled("while building")
            return self._outcome(node, tests)
        if state.cancelled:
            return self._cancelled("before it built")
        if state.early_failure is not None and not state.seen:
            return self._end("failed", early_failure_message(self.producer_task_id, state.early_failure))
        if finished:
            return self._resume("run_itself", f"{self._label()} was not built by the producer run "
                                "(not selected there): this task builds it itself")
        if not state.seen:
            if time.monotonic() - started > self.start_timeout:
                where = f"{self.state_store}/{'/'.join(stream_key(*self._run_identity()[:2]))}" \
                    if self.state_store else path
                return self._end("failed", f"The producer task {self.producer_task_id} did not start within "
                                 f"{self.start_timeout:.0f}s (no {where}); check that task")
            return None
        if time.time() - float(status.get("heartbeat") or 0) > self.heartbeat_timeout:
            log = "" if self.state_store else f", and {(current_launch(path) or path) / 'progress.log'}"
            return self._end("failed", f"The producer run stopped reporting for over "
                             f"{self.heartbeat_timeout:.0f}s (host {status.get('host')}, pid "
                             f"{status.get('pid')}); its log: task {self.producer_task_id}{log}")
        return None

    def _cancelled(self, when: str) -> TriggerEvent:
        return self._end("failed", f"The producer run was cancelled {when} {self._label()} (its task was "
                         f"killed, marked failed or timed out); see the log of task {self.producer_task_id}")

    def _outcome(self, node: dict[str, Any], tests: list[dict[str, Any]]) -> TriggerEvent:
        self._log_result(node)
        for test in tests:
            self._log_result(test)
        if node["status"] == "skipped":
            return self._end("skipped", f"dbt skipped {self.unique_id}: an upstream node failed")
        bad = [r for r in [node, *tests] if r["status"] not in GOOD and r["status"] != "skipped"]
        if bad:
            first = bad[0]
            where = f" (compiled from {first['path']})" if first.get("path") else ""
            return self._end("failed", f"{first['unique_id']} {first['status']}{where}: "
                             f"{(first.get('message') or '').strip()}")
        return self._end("success", f"{self.unique_id} built ({node['execution_time']:.1f}s)")

    def _log_result(self, row: dict[str, Any]) -> None:
        rows = f", {row['rows_affected']} rows" if row.get("rows_affected") not in (None, -1) else ""
        line = (f"{row['unique_id']}: {row['status'].upper()} in {row['execution_time']:.2f}s{rows} "
                f"(started {row.get('started_at') or '?'}, finished {row.get('finished_at') or '?'})")
        message = (row.get("message") or "").strip()
        if row["status"] == "warn":
            self._lines.append(("warning", f"{line}: {message}"))
        elif row["status"] in GOOD or row["status"] == "skipped":
            self._lines.append(("info", f"{line}: {message}" if message else line))
        else:
            self._lines.append(("error", f"{line}: {message}"))

    async def _flush_log(self, final: bool = False) -> None:
        """Write the lines the decision queued, off the event loop (``triggers.offloop``). Before the final
        event, also wait until the triggerer has read them: it closes the task's log when the event
        reaches it, and lines still in the socket then go to the triggerer's own log."""
        lines, self._lines = self._lines, []
        await write_lines(self.log, lines)
        if final and lines and await logs_delivered() >= DELIVERY_TIMEOUT:
            self.log.warning("The triggerer did not read this task's last log lines within %.0fs; "
                             "some may be in the triggerer's own log", DELIVERY_TIMEOUT)

    def _end(self, outcome: str, message: str) -> TriggerEvent:
        self._lines.append(("error" if outcome == "failed" else "info", message))
        if self.end_task:
            event = {"success": TaskSuccessEvent, "failed": TaskFailedEvent, "skipped": TaskSkippedEvent}
            return event[outcome](xcoms=self._links())
        return TriggerEvent({"outcome": outcome, "message": message, "unique_id": self.unique_id})

    def _links(self) -> dict[str, Any] | None:
        """The task's "dbt Docs" link as the worker would have stored it (no worker ends this task)."""
        if not self.docs_page or not self.unique_id:
            return None
        from dlh_airflow_common.links import DbtDocsLink, node_page

        return {DbtDocsLink().xcom_key: node_page(self.docs_page, self.unique_id)}

    def _resume(self, outcome: str, message: str) -> TriggerEvent:
        self._lines.append(("info", message))
        return TriggerEvent({"outcome": outcome, "message": message, "unique_id": self.unique_id})
