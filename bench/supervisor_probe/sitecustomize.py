"""Bench-only probe, never shipped: how often Airflow's task supervisor waits on an empty selector.

``bench/per_node.py --probe-supervisor`` puts this dir on the scheduler's PYTHONPATH (LocalExecutor
workers, which run the supervisors, are its children). Airflow 3.3.2's supervisor reads the task
process's sockets until they close, checks once whether the process has exited, and otherwise selects
on no socket for up to ``[workers] min_heartbeat_interval``: the process exits a few ms after its
sockets close, so the check often comes too early. The probe changes nothing: it appends one line per
such wait (seconds waited) to ``$DLH_BENCH_SUPERVISOR_PROBE``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _patch(out: str) -> None:
    from airflow.sdk.execution_time import supervisor

    original = supervisor.ActivitySubprocess._service_subprocess

    def probed(self: Any, max_wait_time: float, *args: Any, **kwargs: Any) -> Any:
        idle = not self.selector.get_map() and self._exit_code is None
        started = time.monotonic()
        result = original(self, max_wait_time, *args, **kwargs)
        if idle:
            with open(out, "a") as fh:
                fh.write(f"{time.monotonic() - started:.3f}\n")
        return result

    supervisor.ActivitySubprocess._service_subprocess = probed  # type: ignore[method-assign]


if "scheduler" in sys.argv and os.environ.get("DLH_BENCH_SUPERVISOR_PROBE"):
    _patch(os.environ["DLH_BENCH_SUPERVISOR_PROBE"])
