"""Run a trigger to its first event while something happens to what it watches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def first_event_after(trigger: Any, delay: float, action: Callable[[], None],
                      timeout: float) -> tuple[dict[str, Any], float]:
    """The trigger's first event payload, and how long after ``action`` (run ``delay`` s in) it came."""
    async def first() -> tuple[dict[str, Any], float]:
        async def act() -> float:
            await asyncio.sleep(delay)
            action()
            return time.monotonic()

        acted = asyncio.create_task(act())
        async for event in trigger.run():
            return dict(event.payload), time.monotonic() - await acted
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), timeout))
