"""Trigger log lines written off the event loop.

A plain log call in a trigger writes to the trigger runner's log socket from the event loop, and
blocks the whole loop while that socket is full. Airflow 3.3.2's triggerer supervisor reads no logs
while it sends its runner a batch of new triggers, and the blocked loop cannot read that batch: both
wait forever (README, "A triggerer deadlock"). Written from a worker thread, a full socket only holds
that thread; the loop goes on reading, the supervisor finishes its send and drains the logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

Line = tuple[str, str]  # (level: "info" | "warning" | "error", message)


async def write_lines(log: Any, lines: Sequence[Line]) -> None:
    """Write ``lines`` in order from one worker thread (``to_thread`` keeps the trigger's log context)."""
    if lines:
        await asyncio.to_thread(_write, log, list(lines))


def _write(log: Any, lines: list[Line]) -> None:
    for level, message in lines:
        getattr(log, level)("%s", message)
