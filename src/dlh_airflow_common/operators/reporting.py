"""What a finished dbt task try reports, the same in sync and deferrable mode.

Warnings to the task log, metrics to Stats, artifacts to object storage, lineage for OpenLineage,
and the retry state for the next try. Each step is best-effort except the outcome itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.exceptions import DbtException
from dlh_airflow_common.docs import publish_docs
from dlh_airflow_common.lineage import task_lineage
from dlh_airflow_common.metrics import emit_run_metrics
from dlh_airflow_common.operators.retry_state import RetryState
from dlh_airflow_common.storage import upload_artifacts


@dataclass(frozen=True)
class Reporter:
    """Reports one try of one task; ``artifacts`` is a folder that outlives the run dir."""

    ti: Any
    log: logging.Logger | Any
    retry_state: RetryState
    upload_to: str | None = None
    upload_conn_id: str | None = None
    profile_output: dict[str, Any] | None = None
    docs_to: tuple[str | None, str | None] | None = None  # (location, conn_id): publish the docs site

    def success(self, result: dict[str, Any], artifacts: Path, seconds: float) -> Any:
        """Log warnings, emit metrics, upload, build lineage; return the lineage (or None)."""
        summary = result.get("summary") or {}
        for w in summary.get("warnings") or []:
            self.log.warning("dbt warning: %s [%s] %s", w.get("unique_id"), w.get("status"),
                             (w.get("message") or "").strip())
        self._metrics(summary.get("counts") or {}, int(result.get("attempts") or 1), True, seconds)
        lineage = self._after(artifacts)
        self.retry_state.clear()
        if self.docs_to is not None:  # the outcome of a docs task, so a failure to publish fails it
            published = publish_docs(artifacts, *self.docs_to, dag_id=self.ti.dag_id)  # its readers' DAG
            self.log.info("Published dbt docs: %s", published)
        return lineage

    def failure(self, exc: DbtException, artifacts: Path, seconds: float, command: str,
                retry_from_failure: bool) -> Any:
        counts = exc.summary.counts if exc.summary is not None else {}
        self._metrics(counts, exc.attempts, False, seconds)
        lineage = self._after(artifacts)
        if retry_from_failure and RetryState.resumable(command):
            self.retry_state.save(artifacts)
        return lineage

    def _metrics(self, counts: dict[str, int], attempts: int, success: bool, seconds: float) -> None:
        emit_run_metrics(self.ti.dag_id, self.ti.task_id, seconds=seconds, counts=counts, attempts=attempts,
                         success=success)

    def _after(self, artifacts: Path) -> Any:
        ti = self.ti
        if self.upload_to:
            upload_artifacts(artifacts, self.upload_to, self.upload_conn_id, ti.dag_id, ti.task_id,
                             str(ti.run_id), f"try{ti.try_number}")
        return task_lineage(ti, artifacts, self.profile_output or {})
