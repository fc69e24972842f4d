"""DbtExecutionTrigger against control dirs written by hand: how fast it wakes, how fast it lets go."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.core.detached import ControlDir
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger
from tests.blocking_log import BlockingLog, first_event_with


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


def _killed_mid_run(path: Path, pid: int) -> ControlDir:
    """A run that had built three nodes, failed one, and was in the fourth when its task was killed."""
    ctl = _running(path, pid)
    ctl.write_status(launched=time.time() - 12, nodes={
        "running": ["model.demo.slow_model"], "counts": {"success": 2, "error": 1},
        "failures": [{"unique_id": "model.demo.broken", "status": "error", "message": "boom"}]})
    ctl.progress.write_text("[1/4] OK model.demo.a 0.1s\n")
    return ctl


async def _on_kill_cancelled_after(trigger: DbtExecutionTrigger, seconds: float) -> None:
    """As the Airflow 3.3 triggerer does: on_kill under its limit, cancelled again at the next sync."""
    from airflow.sdk import conf

    task = asyncio.ensure_future(asyncio.wait_for(trigger.on_kill(),
                                                  conf.getint("triggerer", "on_kill_timeout")))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_on_kill_cut_short_logs_a_partial_summary_from_the_recorded_nodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dbt's own summary comes only after SIGINT and cancel_grace: the triggerer does not wait for it."""
    supervisor = subprocess.Popen(["sleep", "120"])  # still stopping dbt when on_kill is cut short
    try:
        ctl = _killed_mid_run(tmp_path, supervisor.pid)
        trigger = DbtExecutionTrigger(str(tmp_path), cancel_grace=30)
        asyncio.run(_on_kill_cancelled_after(trigger, 1.0))
    finally:
        supervisor.kill()
        supervisor.wait()
    text = capsys.readouterr().out  # the trigger's log (structlog, to stdout here)
    assert "OK model.demo.a" in text  # the progress not yet relayed, first
    assert "dbt summary: 4 nodes in 1" in text and "(error=1, running=1, success=2)" in text, text
    assert "failed: model.demo.broken [error] boom" in text
    assert "running when killed: model.demo.slow_model" in text
    assert ctl.cancel_flag.exists() and ctl.abandoned_flag.exists()


def test_on_kill_prefers_dbts_own_summary_when_it_arrives_in_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    supervisor = subprocess.Popen(["sleep", "120"])
    try:
        ctl = _killed_mid_run(tmp_path, supervisor.pid)

        def stop_like_the_supervisor() -> None:  # dbt prints its summary after SIGINT, then the end
            while not ctl.cancel_flag.exists():
                time.sleep(0.05)
            with ctl.progress.open("a") as fh:
                fh.write("dbt summary: 4 nodes in 12.5s (error=2, success=2)\n")
            ctl.write_status(state="cancelled")

        threading.Thread(target=stop_like_the_supervisor, daemon=True).start()
        trigger = DbtExecutionTrigger(str(tmp_path), cancel_grace=30)
        asyncio.run(_on_kill_cancelled_after(trigger, 3.0))
    finally:
        supervisor.kill()
        supervisor.wait()
    text = capsys.readouterr().out
    assert "dbt summary: 4 nodes in 12.5s (error=2, success=2)" in text, text
    assert text.count("dbt summary:") == 1 and "running when killed" not in text


def test_unwatched_timeout_comes_from_the_task_then_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.operators import settings

    monkeypatch.delenv(settings.UNWATCHED_TIMEOUT_ENV, raising=False)
    assert settings.unwatched_timeout(None) == 180  # longer than a triggerer restart
    monkeypatch.setenv(settings.UNWATCHED_TIMEOUT_ENV, "600")
    assert settings.unwatched_timeout(None) == 600 and settings.unwatched_timeout(30) == 30
    assert settings.unwatched_timeout(0) == 0  # off


def test_relaying_dbt_progress_to_a_full_log_never_blocks_the_triggerer_loop(tmp_path: Path) -> None:
    """Airflow 3.3.2's triggerer deadlocks when a trigger blocks its loop on a full log socket (README)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ctl = _running(tmp_path, sleeper.pid)
        ctl.progress.write_text("".join(f"12:00:0{i} {i} of 3 OK created model m{i}\n" for i in range(3)))
        finish = threading.Timer(3, lambda: ctl.write_status(state="success", result={"success": True}))
        finish.start()
        log = BlockingLog()
        payload = first_event_with(DbtExecutionTrigger(str(tmp_path), check_interval=1), log)
    finally:
        finish.cancel()
        sleeper.kill()
        sleeper.wait()
    assert payload["status"] == "success"
    assert log.lines[:3] == [f"12:00:0{i} {i} of 3 OK created model m{i}" for i in range(3)]
    assert min(log.during[:3]) > 10, f"event loop ticks during each blocked write: {log.during}"


def test_lines_of_a_trigger_cancelled_while_the_log_is_full_are_still_written() -> None:
    from dlh_airflow_common.triggers.offloop import write_lines

    log = BlockingLog()

    async def main() -> None:
        first = asyncio.create_task(write_lines(log, [("info", "first")]))
        await asyncio.sleep(0.1)  # "first" holds the log thread for 0.5 s
        second = asyncio.create_task(write_lines(log, [("warning", "second"), ("error", "third")]))
        await asyncio.sleep(0.05)
        second.cancel()  # the trigger is cancelled while its lines wait for the log thread
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await first
        await asyncio.sleep(1.5)

    asyncio.run(main())
    assert log.lines == ["first", "second", "third"]
