"""dbt run metrics through Airflow's Stats (StatsD/OpenTelemetry as the deployment configures)."""

from __future__ import annotations

import logging

from dlh_airflow_common._compat import stats as _stats

log = logging.getLogger(__name__)


def emit_run_metrics(dag_id: str, task_id: str, *, seconds: float, counts: dict[str, int], attempts: int,
                     success: bool) -> None:
    """Duration, nodes by status, retries and outcome, tagged by DAG and task."""
    try:
        stats = _stats()
        tags = {"dag_id": dag_id, "task_id": task_id}
        stats.timing("dbt.run.duration", seconds * 1000.0, tags=tags)
        for status, count in counts.items():
            stats.incr(f"dbt.nodes.{status.replace(' ', '_')}", count, tags=tags)
        if attempts > 1:
            stats.incr("dbt.run.retries", attempts - 1, tags=tags)
        stats.incr("dbt.run.success" if success else "dbt.run.failure", 1, tags=tags)
    except Exception as exc:  # metrics must never break a task
        log.debug("dbt metrics not emitted: %s", exc)
