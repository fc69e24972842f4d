"""Tell transient dbt failures (retry) from permanent ones (fix the code or config)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from dlh_airflow_common.core.exceptions import (
    DbtCompilationException,
    DbtConnectionException,
    DbtException,
    DbtProfileException,
    DbtRuntimeException,
)

# Order matters: the first family that matches any message wins.
_PROFILE = re.compile(
    r"could not find profile named|profile .* not found|runtime error\s+credentials in profile"
    r"|invalid profile|profiles\.yml file|env var required but not provided|could not find adapter type"
    r"|target .* not found|does not have a target named",
    re.IGNORECASE,
)
_COMPILATION = re.compile(
    r"compilation error|parsing error|dependency error|jinja|is undefined"
    r"|could not render|yaml error|found a cycle",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"connection refused|could not connect|connection reset|connection timed out|timed out"
    r"|timeout expired|server closed the connection unexpectedly|connection (?:was )?lost"
    r"|terminating connection due to administrator command"
    r"|the database system is (?:starting up|shutting down)"
    r"|too many connections|remaining connection slots|temporar(?:y|ily) unavailable|try again"
    r"|service unavailable|bad gateway|gateway time-?out|\b50[234]\b|broken pipe|ssl syscall error"
    r"|name or service not known|temporary failure in name resolution|failed to connect",
    re.IGNORECASE,
)


def classify_messages(messages: Iterable[str]) -> type[DbtException]:
    """Pick the exception class for a failed run from its error messages."""
    texts = [m for m in messages if m]
    for pattern, cls in (
        (_PROFILE, DbtProfileException),
        (_COMPILATION, DbtCompilationException),
        (_TRANSIENT, DbtConnectionException),
    ):
        if any(pattern.search(t) for t in texts):
            return cls
    return DbtRuntimeException


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on a retry (the warehouse was briefly unreachable)."""
    return isinstance(exc, DbtException) and exc.retryable
