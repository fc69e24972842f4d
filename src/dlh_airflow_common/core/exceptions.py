"""Exception hierarchy for dbt runs: the class tells the caller what to do next."""

from __future__ import annotations

from typing import Any


class DbtException(Exception):
    """Base of every dbt failure; carries what an operator needs to triage without digging.

    Plain Python: the core never imports Airflow. The operator layer raises these to Airflow as
    ``AirflowException`` subclasses (``airflow_errors.py``).
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        return_code: int | None = None,
        failed_nodes: list[dict[str, Any]] | None = None,
        output_tail: str = "",
        summary: Any = None,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.attempts = attempts  # tries inside one task try (transient failures are retried)
        self.summary = summary  # the RunSummary of what did run, when dbt got that far
        self.command = command
        self.return_code = return_code
        self.failed_nodes = failed_nodes or []
        self.output_tail = output_tail
        super().__init__(self._render())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, so a failure seen in another process is re-raised as the same class."""
        summary = self.summary.to_dict() if hasattr(self.summary, "to_dict") else self.summary
        return {"type": type(self).__name__, "message": self.message, "command": self.command,
                "return_code": self.return_code, "failed_nodes": self.failed_nodes,
                "output_tail": self.output_tail, "summary": summary,
                "conn_id": getattr(self, "conn_id", None), "attempts": self.attempts}

    def _render(self) -> str:
        parts = [self.message]
        if self.command:
            parts.append(f"command: {self.command}")
        if self.return_code is not None:
            parts.append(f"return code: {self.return_code}")
        for node in self.failed_nodes:
            msg = (node.get("message") or "").strip().replace("\n", "\n      ")
            parts.append(f"  - {node.get('unique_id')} [{node.get('status')}]: {msg}")
        if self.output_tail:
            parts.append("--- last dbt output ---\n" + self.output_tail)
        return "\n".join(parts)


class DbtCompilationException(DbtException):
    """The project does not compile (Jinja, YAML, missing ref): a code fix is needed."""


class DbtRuntimeException(DbtException):
    """A node failed in the warehouse (SQL error, data issue): not fixed by retrying."""


class DbtTestFailure(DbtRuntimeException):
    """A data test with severity error failed."""


class DbtConnectionException(DbtException):
    """The warehouse could not be reached: transient, worth retrying."""

    retryable = True

    def __init__(self, message: str, *, conn_id: str | None = None, **kwargs: Any) -> None:
        self.conn_id = conn_id
        super().__init__(message, **kwargs)


class DbtProfileException(DbtException):
    """The profile or connection configuration is wrong: the message names the field to fix."""


class DbtConnectionAuthException(DbtProfileException):
    """The warehouse answered but refused the credentials (or the database/role): a retry cannot help."""


class DbtDuckDBLockedException(DbtRuntimeException):
    """Another process holds the DuckDB file (DuckDB allows one writer per file)."""


class DbtProjectException(DbtException):
    """The dbt project itself cannot be used (missing directory, no dbt_project.yml)."""


class DbtEmptySelectionException(DbtProjectException):
    """The selection (select / exclude / selector) matches no node of the project (core.selection)."""


class DbtRuntimeRootException(DbtException):
    """The runtime root, or something in it, is not this user's alone: refusing to use it."""


class DbtStateStoreException(DbtException):
    """The state store (``[dlh_dbt] state_store``) cannot be used: the message names the URL and the fix."""


class DbtCancelledException(DbtException):
    """The run was cancelled (on_kill, timeout); partial results are attached."""


class DbtTimeoutException(DbtCancelledException):
    """The run exceeded its time limit and was cancelled."""


def exception_from_dict(data: dict[str, Any]) -> DbtException:
    """Rebuild an exception serialised by :meth:`DbtException.to_dict`."""
    from dlh_airflow_common.core.artifacts import RunSummary

    classes: dict[str, type[DbtException]] = {}
    for known in _all_subclasses(DbtException):  # a class before its subclasses of the same name
        classes.setdefault(known.__name__, known)
    cls = classes.get(str(data.get("type")), DbtException)
    summary = RunSummary(**data["summary"]) if isinstance(data.get("summary"), dict) else None
    kwargs: dict[str, Any] = {
        "command": data.get("command"), "return_code": data.get("return_code"),
        "failed_nodes": data.get("failed_nodes"), "output_tail": data.get("output_tail") or "",
        "summary": summary, "attempts": int(data.get("attempts") or 1),
    }
    if issubclass(cls, DbtConnectionException):
        return cls(str(data.get("message")), conn_id=data.get("conn_id"), **kwargs)
    return cls(str(data.get("message")), **kwargs)


def _all_subclasses(cls: type[DbtException]) -> list[type[DbtException]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _all_subclasses(sub)
    return found
