"""Bench-only probe, never shipped: how often Airflow's task supervisor waits on an empty selector.

``bench/per_node.py --probe-supervisor`` puts this dir on the scheduler's PYTHONPATH (LocalExecutor
workers, which run the supervisors, are its children). Airflow 3.3.2's supervisor reads the task
process's sockets until they close, checks once whether the process has exited, and otherwise selects
on no socket for up to ``[workers] min_heartbeat_interval``: the process exits a few ms after its
sockets close, so the check often comes too early. The probe changes nothing: it appends to
``$DLH_BENCH_SUPERVISOR_PROBE`` one ``wait <s>`` line per such wait and one ``done`` line per
supervised task process (the total to compare with).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _patch(out: str) -> None:
    from airflow.sdk.execution_time import supervisor

    def note(line: str) -> None:
        try:
            with open(out, "a") as fh:
                fh.write(line + "\n")
        except OSError:  # a probe must never fail the task it watches
            pass

    service, wait = supervisor.ActivitySubprocess._service_subprocess, supervisor.ActivitySubprocess.wait

    def probed_service(self: Any, max_wait_time: float, *args: Any, **kwargs: Any) -> Any:
        idle = not self.selector.get_map() and self._exit_code is None
        started = time.monotonic()
        result = service(self, max_wait_time, *args, **kwargs)
        if idle:
            note(f"wait {time.monotonic() - started:.3f}")
        return result

    def probed_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return wait(self, *args, **kwargs)
        finally:
            note("done")

    supervisor.ActivitySubprocess._service_subprocess = probed_service  # type: ignore[method-assign]
    supervisor.ActivitySubprocess.wait = probed_wait  # type: ignore[method-assign]
    print(f"supervisor probe active in pid {os.getpid()}: writing {out}", file=sys.stderr, flush=True)


if "scheduler" in sys.argv and os.environ.get("DLH_BENCH_SUPERVISOR_PROBE"):
    _patch(os.environ["DLH_BENCH_SUPERVISOR_PROBE"])
