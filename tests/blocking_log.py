"""A trigger logger that blocks like a write to the trigger runner's full log socket."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class BlockingLog:
    """A trigger logger whose every write blocks for 0.5 s, like a write to the trigger runner's full
    log socket; it records how many times a ticker on the event loop ran during each write."""

    def __init__(self) -> None:
        self.ticks = 0
        self.during: list[int] = []
        self.lines: list[str] = []

    def _write(self, event: str, *args: Any, **kw: Any) -> None:
        start = self.ticks
        time.sleep(0.5)
        self.during.append(self.ticks - start)
        self.lines.append(event % args if args else event)

    info = warning = error = _write


def first_event_with(trigger: Any, log: BlockingLog) -> Any:
    """The trigger's first event payload, run beside a coroutine that ticks every 10 ms."""
    trigger._log = log

    async def main() -> Any:
        async def tick() -> None:
            while True:
                await asyncio.sleep(0.01)
                log.ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            async for event in trigger.run():
                return event.payload
        finally:
            ticker.cancel()

    return asyncio.run(asyncio.wait_for(main(), 30))

