"""What a failed run tells the person reading the task log: the real error first, the failing SQL.

dbt wraps an error in generic lines ("Encountered an error:", "Runtime Error") and points at the
compiled SQL by a path in the run's target dir, which is removed after the task unless artifacts are
kept. So the headline is the first line that says something, and the SQL itself (bounded) is shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_SQL_LINES = 60
MAX_SQL_BYTES = 8 * 1024
MAX_SQL_NODES = 5  # a build with hundreds of failures must not flood XCom and the log

# dbt's wrappers around the real message: "Encountered an error:", "Runtime Error", "Database Error".
_WRAPPER = re.compile(r"^(?:\d\d:\d\d:\d\d\s+)?(?:Encountered an error:?|[A-Z][A-Za-z ]{0,40} Error:?)$")
_COMPILED_AT = re.compile(r"^[ \t]*compiled code at (\S+)[ \t]*$\n?", re.MULTILINE)


def first_real_line(messages: Iterable[str]) -> str:
    """The first line of the messages that is not one of dbt's generic wrapper lines."""
    fallback = ""
    for message in messages:
        for line in message.splitlines():
            text = line.strip()
            if text and not _WRAPPER.match(text):
                return text
            fallback = fallback or text
    return fallback or "no output"


def bounded(sql: str) -> str:
    """At most :data:`MAX_SQL_LINES` lines and :data:`MAX_SQL_BYTES` bytes, saying what was cut."""
    text = sql.strip("\n")
    lines = text.splitlines()
    cut = len(lines) > MAX_SQL_LINES
    text = "\n".join(lines[:MAX_SQL_LINES])
    if len(text.encode()) > MAX_SQL_BYTES:
        text = text.encode()[:MAX_SQL_BYTES].decode(errors="ignore")
        cut = True
    return text + ("\n-- ... (cut)" if cut else "")


def without_compiled_paths(text: str) -> str:
    """``text`` without dbt's "compiled code at <path>" lines (for when that path is removed)."""
    return _COMPILED_AT.sub("", text).rstrip()


def _squash(text: str) -> str:
    return " ".join(without_compiled_paths(text).split())


def fresh_output(tail: Iterable[str], shown: Iterable[str], lines: int = 25) -> str:
    """The last output entries, less those that repeat a message the report ``shown`` already.

    dbt reports a node's error again at the end of the run, indented and with the compiled paths.
    """
    seen = [_squash(m) for m in shown]
    kept = [t for t in tail if not (len(_squash(t)) >= 20 and any(_squash(t) in m for m in seen))]
    return "\n".join(kept[-lines:])


def _compiled_code(row: Mapping[str, Any], message: str) -> str | None:
    """The node's compiled SQL: run_results' ``compiled_code``, else the file dbt's message names."""
    code = row.get("compiled_code")
    if isinstance(code, str) and code.strip():
        return code
    for match in _COMPILED_AT.finditer(message):
        try:
            return Path(match.group(1)).read_text()
        except OSError:
            continue
    return None


def with_compiled_sql(failures: list[dict[str, Any]], run_results: Mapping[str, Any],
                      clean: Callable[[str], str], target_removed: bool) -> list[dict[str, Any]]:
    """Failed-node rows whose message carries their compiled SQL instead of a path to it.

    ``clean`` redacts secrets (and maps paths); ``target_removed`` drops the "compiled code at"
    lines that would point into a directory deleted after the task.
    """
    by_id = {r.get("unique_id"): r for r in run_results.get("results") or [] if isinstance(r, dict)}
    rows = []
    for index, failure in enumerate(failures):
        message = str(failure.get("message") or "")
        code = _compiled_code(by_id.get(failure.get("unique_id")) or {}, message)
        if target_removed:
            message = without_compiled_paths(message)
        message = clean(message)
        if code is not None and index < MAX_SQL_NODES:
            sql = clean(bounded(code))
            message += "\ncompiled SQL:\n" + sql
        rows.append({**failure, "message": message})
    return rows
