"""Run a test's dbt cold or warm on purpose, never by whatever server an earlier test left behind.

Each test gets a private ``DLH_DBT_WARM_DIR`` (a name without "dbt" in it, so no check can pass by
matching that word in the warm server's command line). Cold turns warm starts off; warm starts dbt
until a server of that dir listens, and the test can then check its dbt was forked by that server.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.processes import parent_of


class DbtStart:
    """How this test's dbt processes start: ``cold`` (a child of pytest) or ``warm`` (a server's fork)."""

    def __init__(self, mode: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self.home = home
        self.server: int | None = None
        monkeypatch.setenv("DLH_DBT_WARM_DIR", str(home))
        monkeypatch.setenv("DLH_DBT_WARM_START", "1" if mode == "warm" else "0")

    def prime(self, start_dbt: Callable[[], object], times: int = 2, timeout: float = 90) -> None:
        """Warm: run ``start_dbt`` (a cheap dbt command) ``times`` times, then wait until the server listens.

        A host that starts dbt again soon after a cold start gets a server for the starts after that
        (``times=1`` when the test has just started dbt once itself). Cold: nothing to do.
        """
        if self.mode == "cold":
            return
        for _ in range(times):
            start_dbt()
        deadline = time.monotonic() + timeout
        while not list(self.home.glob("*.sock")) and time.monotonic() < deadline:
            time.sleep(0.2)
        logs = "".join(p.read_text() for p in self.home.glob("*.log"))
        assert list(self.home.glob("*.sock")), f"no warm server in {self.home}: {logs}"
        listening = [int(line.split()[3]) for line in logs.splitlines() if " listening on " in line]
        self.server = listening[-1]

    def assert_started(self, dbt_pid: int) -> None:
        """The dbt process is what this mode says: pytest's child, or a fork of this test's server."""
        expected = os.getpid() if self.mode == "cold" else self.server
        assert expected is not None, "a warm test must prime() first"
        assert parent_of(dbt_pid) == expected, (self.mode, dbt_pid, parent_of(dbt_pid), expected)

    def stop(self) -> None:
        """End the server this test started (it would idle for minutes)."""
        if self.server is not None:
            try:
                cmdline = Path(f"/proc/{self.server}/cmdline").read_bytes()
            except OSError:
                return
            if str(self.home).encode() in cmdline:  # still ours, not a reused pid
                os.kill(self.server, signal.SIGTERM)
