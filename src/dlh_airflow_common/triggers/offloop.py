"""Work our triggers do off the triggerer's event loop, on threads of their own.

Log lines: a plain log call in a trigger writes to the trigger runner's log socket from the event
loop, and blocks the whole loop while that socket is full. Airflow 3.3.2's triggerer supervisor reads
no logs while it sends its runner a batch of new triggers, and the blocked loop cannot read that
batch: both wait forever (README, "A triggerer deadlock"). Written from a thread, a full socket only
holds that thread; the loop goes on reading, the supervisor finishes its send and drains the logs.

Own threads, not ``asyncio.to_thread``: the loop's default executor has a few threads (6 on 2 cores),
shared with Airflow's own async log calls, which also park there while the socket is full. Our log
writes go to one thread (structlog serialises writes to the socket anyway), the stream polls of
node triggers to another, so neither waits behind log writes.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import functools
import os
import stat
import struct
import termios
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Line = tuple[str, str]  # (level: "info" | "warning" | "error", message)

_threads: dict[str, tuple[int, ThreadPoolExecutor]] = {}
# How long a trigger holds its final event for its log lines to be read (the triggerer's supervisor
# reads nothing while it builds a batch of new triggers: seconds, at hundreds of them).
DELIVERY_TIMEOUT = 60.0


def _thread(name: str) -> ThreadPoolExecutor:
    """One thread per name and process (the triggerer forks its runner: a pool never crosses a fork)."""
    pid = os.getpid()
    entry = _threads.get(name)
    if entry is None or entry[0] != pid:
        entry = _threads[name] = (pid, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dlh-{name}"))
    return entry[1]


async def run_off_loop(name: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the thread ``name``, in a copy of the caller's context (Airflow routes a
    trigger's log lines by context variables)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(_thread(name), call)


async def write_lines(log: Any, lines: Sequence[Line]) -> None:
    """Write ``lines`` in order, off the loop. Shielded: a trigger cancelled meanwhile still has its
    lines written (after the cancel, if the socket is full)."""
    if lines:
        await asyncio.shield(run_off_loop("trigger-log", _write, log, list(lines)))


def _write(log: Any, lines: list[Line]) -> None:
    for level, message in lines:
        getattr(log, level)("%s", message)


def _log_socket() -> int | None:
    """The fd of the trigger runner's log socket to its supervisor, else None (dag.test(), a worker).

    Airflow internals: the runner's structlog logger factory writes JSON lines to it (``io``); stdlib
    loggers end in the same fd.
    """
    try:
        import structlog

        io = getattr(structlog.get_config().get("logger_factory"), "io", None)
        fd = io.fileno() if io is not None else None
        return fd if isinstance(fd, int) and stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except Exception:
        return None


def unread_log_bytes(fd: int) -> int:
    """Bytes written to a Unix socket that its reader has not read yet (Linux ``SIOCOUTQ``)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


async def logs_delivered(timeout: float | None = None, interval: float = 0.02,
                         fd: int | None = None) -> float:
    """Wait until the triggerer's supervisor has read every log line written so far (at most ``timeout``).

    Airflow 3.3.2's supervisor closes a trigger's log file when the trigger's end reaches it, and
    reads its runner's log socket 4 KB per loop: lines still queued then go to the triggerer's own
    log. A trigger that waits for the queue to empty before its final event keeps its last lines.
    Returns the seconds waited (0 where there is no such socket); ``fd``: another socket (tests).
    """
    timeout = DELIVERY_TIMEOUT if timeout is None else timeout
    fd = (fd if fd is not None else _log_socket()) if timeout > 0 else None
    if fd is None:
        return 0.0
    began = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.shield(_Drain.of(fd, interval).wait(began + timeout)), timeout)
    except TimeoutError:
        pass
    return time.monotonic() - began


class _Drain:
    """One poll of a log socket for every trigger of the process waiting for it to empty.

    Thousands of triggers end together when dbt does; each polling the socket itself every 20 ms made
    the event loop's own work grow with them, slowing the very reads they waited for.
    """

    drains: dict[int, _Drain] = {}  # fd -> the drain being watched

    def __init__(self, fd: int, interval: float) -> None:
        self.fd, self.interval, self.until = fd, interval, 0.0
        self.loop = asyncio.get_running_loop()
        self.emptied: asyncio.Future[None] = self.loop.create_future()
        self.task = self.loop.create_task(self._poll())

    @classmethod
    def of(cls, fd: int, interval: float) -> _Drain:
        drain = cls.drains.get(fd)
        # joined before its next check, which then follows the caller's lines
        if drain is None or drain.emptied.done() or drain.loop is not asyncio.get_running_loop():
            drain = cls.drains[fd] = cls(fd, interval)
        return drain

    async def wait(self, until: float) -> None:
        self.until = max(self.until, until)  # polled while anyone still waits
        await self.emptied

    async def _poll(self) -> None:
        try:
            while time.monotonic() < self.until or not self.until:
                try:
                    if unread_log_bytes(self.fd) <= 0:
                        break
                except OSError:
                    break
                await asyncio.sleep(self.interval)
        finally:
            if not self.emptied.done():
                self.emptied.set_result(None)
