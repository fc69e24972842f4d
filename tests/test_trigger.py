"""DbtExecutionTrigger against control dirs written by hand: how fast it wakes, how fast it lets go."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.detached import ControlDir
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger


def _running(path: Path, pid: int) -> ControlDir:
    ctl = ControlDir(path)
    ctl.write_status(state="running", host=socket.gethostname(), pid=pid, heartbeat=time.time())
    return ctl


def test_trigger_fires_within_a_second_of_the_status_changing(tmp_path: Path) -> None:
    """``check_interval`` bounds the heavier checks only: the end of dbt is seen at once."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ctl = _running(tmp_path, sleeper.pid)
        trigger = DbtExecutionTrigger(str(tmp_path), check_interval=10)
        ended: list[float] = []

        def finish() -> None:
            time.sleep(2.5)  # after the trigger's first full check, well inside check_interval
            ctl.write_status(state="success", result={"success": True})
            ended.append(time.monotonic())

        async def first_event() -> Any:
            async for event in trigger.run():
                return event.payload

        threading.Thread(target=finish, daemon=True).start()
        payload = asyncio.run(asyncio.wait_for(first_event(), 30))
        latency = time.monotonic() - ended[0]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert payload["status"] == "success"
    assert latency < 1.0, f"the trigger saw the end {latency:.2f}s late"


def test_on_kill_returns_within_the_triggerers_limit_and_leaves_cleanup_to_the_supervisor(
        tmp_path: Path) -> None:
    """The triggerer abandons on_kill after ``[triggerer] on_kill_timeout``: it must not wait for dbt."""
    from airflow.sdk import conf

    limit = conf.getint("triggerer", "on_kill_timeout")
    assert limit == 30  # Airflow 3.3's default, shorter than the default cancel_grace (30) + wait
    alive = subprocess.Popen(["sleep", "120"])  # a supervisor that takes its time to stop dbt
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        live_dir, dead_dir = tmp_path / "live", tmp_path / "dead"
        live_dir.mkdir()
        dead_dir.mkdir()
        live, dead = _running(live_dir, alive.pid), _running(dead_dir, gone.pid)
        took = []
        for ctl in (live, dead):
            ctl.progress.write_text("[1/2] OK model.demo.a 0.1s\n")
            trigger = DbtExecutionTrigger(str(ctl.path), cancel_grace=30)
            started = time.monotonic()
            asyncio.run(asyncio.wait_for(trigger.on_kill(), timeout=limit))  # TimeoutError past the limit
            took.append(time.monotonic() - started)
        assert limit - 10 < took[0] < limit  # waits for dbt's last lines as long as it may, no longer
        assert took[1] < 2  # nothing to wait for
        # The live supervisor is asked to cancel and to remove its dir when done; a dead one cannot.
        assert live.cancel_flag.exists() and live.abandoned_flag.exists()
        assert not dead_dir.exists()
    finally:
        alive.kill()
        alive.wait()
