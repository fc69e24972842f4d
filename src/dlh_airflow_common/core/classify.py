"""Tell transient dbt failures (retry) from permanent ones (fix the code or config).

The evidence is structured first: the classes of the exception dbt raised (reported by our entry
module or dbtRunner), then run_results statuses, and only as the last resort the text of an adapter's
connection error. Words like "timed out" also describe a SQL ``statement_timeout``, which a retry
would only repeat, so the text rules below name connection failures and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlh_airflow_common.core.exceptions import (
    DbtCompilationException,
    DbtConnectionAuthException,
    DbtConnectionException,
    DbtDuckDBLockedException,
    DbtException,
    DbtProfileException,
    DbtProjectException,
    DbtRuntimeException,
    DbtTestFailure,
)

# dbt's exception classes (dbt_common.exceptions, dbt.exceptions, dbt.adapters.exceptions) by name,
# most specific first along the raised exception's MRO. Connection failures are decided below.
_BY_CLASS: dict[str, type[DbtException]] = {
    "DbtProfileError": DbtProfileException,
    "DbtProjectError": DbtProjectException,
    "DbtSelectorsError": DbtProjectException,
    "DbtConfigError": DbtProjectException,
    "CompilationError": DbtCompilationException,
    "ParsingError": DbtCompilationException,
    "DependencyError": DbtCompilationException,
    "DbtDatabaseError": DbtRuntimeException,
    "DbtRuntimeError": DbtRuntimeException,
    "DbtInternalError": DbtRuntimeException,
}
_CONNECT_CLASSES = {"FailedToConnectError", "InvalidConnectionError"}

# Last resort, only on a connection error's text: the warehouse could not be reached (transient)...
_UNREACHABLE = re.compile(
    r"connection refused|could not connect to server|connection reset by peer|connection timed out"
    r"|timeout expired|server closed the connection unexpectedly|connection (?:was )?lost"
    r"|terminating connection due to administrator command|ssl syscall error"
    r"|the database system is (?:starting up|shutting down|in recovery mode)"
    r"|too many connections|remaining connection slots are reserved"
    r"|name or service not known|temporary failure in name resolution|could not translate host name",
    re.IGNORECASE,
)
# ...or it refused who we are (a retry sends the same credentials again).
_REFUSED_CREDENTIALS = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry"
    r"|role \S+ does not exist|invalid (?:username|user name|password)|incorrect username or password"
    r"|permission denied for database|database \S+ does not exist",
    re.IGNORECASE,
)
# DuckDB allows one writer per file: another process holds it.
_DUCKDB_LOCK = re.compile(r"could not set lock on file|conflicting lock is held", re.IGNORECASE)
# A dbt CLI from another virtualenv reports an exception only as text (MainEncounteredError).
_CLI_PROFILE = re.compile(
    r"could not find profile named|profile .* not found|credentials in profile|invalid profile"
    r"|env var required but not provided|could not find adapter type|does not have a target named",
    re.IGNORECASE,
)
_CLI_PROJECT = re.compile(r"dbt_project\.yml|invalid config version|project config", re.IGNORECASE)
_CLI_COMPILATION = re.compile(r"^\s*(?:compilation|parsing|dependency) error", re.IGNORECASE | re.MULTILINE)


@dataclass
class Evidence:
    """What a failed run left behind, in the order it is trusted."""

    exception_classes: Sequence[str] = ()  # MRO names of dbt's exception, when it raised one
    exception_message: str = ""
    failed_nodes: Sequence[dict[str, Any]] = field(default_factory=list)  # run_results rows
    messages: Sequence[str] = ()  # error texts (error events such as a foreign CLI's MainEncounteredError)


def _connection_class(texts: Iterable[str]) -> type[DbtException]:
    joined = "\n".join(texts)
    if _DUCKDB_LOCK.search(joined):
        return DbtDuckDBLockedException
    if _REFUSED_CREDENTIALS.search(joined):
        return DbtConnectionAuthException
    return DbtConnectionException


def classify(evidence: Evidence) -> type[DbtException]:
    """Pick the exception class for a failed run."""
    classes = list(evidence.exception_classes)
    if classes:
        if _CONNECT_CLASSES & set(classes):
            return _connection_class([evidence.exception_message])
        if _DUCKDB_LOCK.search(evidence.exception_message):
            return DbtDuckDBLockedException
        return next((_BY_CLASS[c] for c in classes if c in _BY_CLASS), DbtRuntimeException)
    nodes = list(evidence.failed_nodes)
    if nodes:
        node_texts = [str(n.get("message") or "") for n in nodes]
        if all(n.get("status") == "fail" for n in nodes):
            return DbtTestFailure
        if all(_UNREACHABLE.search(t) or _DUCKDB_LOCK.search(t) for t in node_texts):
            return _connection_class(node_texts)  # every failing node lost its connection
        return DbtRuntimeException
    return _classify_text(list(evidence.messages))


def _classify_text(texts: list[str]) -> type[DbtException]:
    """A dbt CLI of another virtualenv that failed before any node: only its words are left."""
    joined = "\n".join(texts)
    if any(p.search(joined) for p in (_DUCKDB_LOCK, _REFUSED_CREDENTIALS, _UNREACHABLE)):
        return _connection_class(texts)
    for pattern, cls in ((_CLI_PROFILE, DbtProfileException), (_CLI_COMPILATION, DbtCompilationException),
                         (_CLI_PROJECT, DbtProjectException)):
        if pattern.search(joined):
            return cls
    return DbtRuntimeException


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on a retry (the warehouse was briefly unreachable)."""
    return isinstance(exc, DbtException) and exc.retryable
