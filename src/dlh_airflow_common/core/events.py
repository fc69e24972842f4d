"""Turn dbt's structured log events into progress lines and failure context (no regex on text)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from dlh_airflow_common._dbt_entry import EXCEPTION_EVENT

log = logging.getLogger(__name__)

_STATUS_WORDS = {"success": "OK", "ok": "OK", "pass": "PASS", "error": "ERROR", "fail": "FAIL",
                 "warn": "WARN", "skipped": "SKIP", "skip": "SKIP", "runtime error": "ERROR"}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text``; used on anything we log or raise."""
    for value in secrets:
        if value and len(value) >= 3:
            text = text.replace(value, "*****")
    return text


class EventCollector:
    """Consumes dbt events (JSON log lines or callback messages, both ``{info, data}`` dicts)."""

    def __init__(
        self,
        progress: Callable[[str], None] | None = None,
        secrets: Iterable[str] = (),
        tail_size: int = 40,
        rewrite: Callable[[str], str] | None = None,
    ) -> None:
        self._progress = progress or log.info
        self._secrets = [s for s in secrets if s]
        self._rewrite = rewrite  # e.g. private shadow paths back to the user's project
        self.tail: deque[str] = deque(maxlen=tail_size)
        self.errors: list[str] = []
        self.exception_classes: list[str] = []  # dbt's exception, when our entry or dbtRunner saw one
        self.exception_message = ""

    def clean(self, text: str) -> str:
        """Text fit to show: secrets redacted, paths the user's own."""
        text = redact(text, self._secrets)
        return self._rewrite(text) if self._rewrite else text

    def _remember(self, text: str) -> None:
        if text not in self.tail:  # dbt reports one error in several events: show it once
            self.tail.append(text)

    def feed_text(self, line: str) -> None:
        """A line that is not a JSON event (a traceback on stderr, an adapter's print)."""
        line = self.clean(line.rstrip("\n"))
        if line:
            self._remember(line)

    def feed(self, event: dict[str, Any]) -> None:
        info = event.get("info") or {}
        data = event.get("data") or {}
        name = info.get("name", "")
        msg = self.clean(str(info.get("msg") or ""))
        level = info.get("level", "")
        if name == EXCEPTION_EVENT:
            self.exception_classes = [str(c) for c in data.get("classes") or []]
            self.exception_message = self.clean(str(data.get("message") or ""))
            return
        if msg and level in {"info", "warn", "error"}:
            self._remember(msg)
        if level == "error" and msg and msg not in self.errors:
            self.errors.append(msg)
        if name == "MainReportVersion" and msg:
            self._progress(msg)  # "Running with dbt=1.x.y": which dbt ran (venv_path, dbt_executable)
        node = data.get("node_info") or {}
        total = data.get("total") or data.get("num_models")
        if "index" in data and total and node.get("unique_id") and name != "LogStartLine":
            # node_status is dbt's own verdict; data.status may be an adapter message ("SELECT 5").
            raw = [str(v).lower() for v in (node.get("node_status"), data.get("status")) if v]
            status = "skipped" if name == "SkippingDetails" else next(
                (r for r in raw if r in _STATUS_WORDS), raw[0] if raw else "")
            word = _STATUS_WORDS.get(status, status.upper() or "DONE")
            seconds = float(data.get("execution_time") or 0.0)
            line = f"[{data['index']}/{total}] {word} {node['unique_id']} {seconds:.1f}s"
            self._progress(line)

    def output_tail(self, lines: int = 25) -> str:
        return "\n".join(list(self.tail)[-lines:])
