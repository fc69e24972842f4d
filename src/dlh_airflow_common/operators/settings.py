"""Deployment settings a dbt task reads from its environment or airflow.cfg, and the checks on them."""

from __future__ import annotations

import os
from pathlib import Path

from dlh_airflow_common._compat import conf
from dlh_airflow_common.core.exceptions import DbtException, DbtProjectException
from dlh_airflow_common.core.retention import Retention
from dlh_airflow_common.core.runtime import default_runtime_root
from dlh_airflow_common.state_store import StoreSetting

SHARED_ROOT_ENV = "DLH_DBT_SHARED_RUNTIME_ROOT"
PROJECT_DIR_ENV = "DLH_DBT_PROJECT_DIR"
RETENTION_HOURS_ENV = "DLH_DBT_RETENTION_MAX_AGE_HOURS"
RETENTION_KEEP_ENV = "DLH_DBT_RETENTION_KEEP"
UNWATCHED_TIMEOUT_ENV = "DLH_DBT_UNWATCHED_TIMEOUT"
STATE_STORE_ENV = "DLH_DBT_STATE_STORE"
STATE_STORE_CONN_ENV = "DLH_DBT_STATE_STORE_CONN_ID"
# Long enough for a triggerer restart or the move of its triggers to another triggerer.
DEFAULT_UNWATCHED_TIMEOUT = 180.0


def default_deferrable() -> bool:
    """``[operators] default_deferrable``, as Airflow's own deferrable operators read it."""
    return bool(conf.getboolean("operators", "default_deferrable", fallback=False))


def shared_root_declared() -> bool:
    """Whether the deployment says the runtime root is one volume seen by workers and triggerers."""
    if os.environ.get(SHARED_ROOT_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return True
    return bool(conf.getboolean("dlh_dbt", "shared_runtime_root", fallback=False))


def state_store(url: str | None, conn_id: str | None = None) -> StoreSetting | None:
    """Where state shared across hosts goes (``s3://bucket/prefix``), or None (the runtime root).

    Each part: the task's argument, else ``$DLH_DBT_STATE_STORE`` / ``$DLH_DBT_STATE_STORE_CONN_ID``,
    else ``[dlh_dbt] state_store`` / ``state_store_conn_id``.
    """
    url = url or os.environ.get(STATE_STORE_ENV) or conf.get("dlh_dbt", "state_store", fallback=None)
    if not url:
        return None
    conn_id = (conn_id or os.environ.get(STATE_STORE_CONN_ENV)
               or conf.get("dlh_dbt", "state_store_conn_id", fallback=None))
    return StoreSetting(str(url).rstrip("/"), str(conn_id) if conn_id else None)


def ends_worker_on_defer() -> bool:
    """The executor deletes the worker (its pod) when a task defers: nothing detached survives there."""
    return "Kubernetes" in str(conf.get("core", "executor", fallback=""))


def runtime_root(given: str | None) -> Path:
    return Path(given) if given else default_runtime_root()


def retention(max_age: float | None, keep: int | None) -> Retention:
    """The task's argument, else ``$DLH_DBT_RETENTION_*``, else ``[dlh_dbt] retention_*``, else defaults."""
    default = Retention()
    if max_age is None:
        hours = os.environ.get(RETENTION_HOURS_ENV) or conf.get("dlh_dbt", "retention_max_age_hours",
                                                                 fallback=None)
        max_age = float(hours) * 3600 if hours else default.max_age
    if keep is None:
        count = os.environ.get(RETENTION_KEEP_ENV) or conf.get("dlh_dbt", "retention_keep", fallback=None)
        keep = int(count) if count else default.keep
    return Retention(max_age=max_age, keep=keep)


def unwatched_timeout(given: float | None) -> float:
    """Seconds a deferred run may go unwatched before it is cancelled (0: never); see core.detached.

    The task's argument, else ``$DLH_DBT_UNWATCHED_TIMEOUT``, else ``[dlh_dbt] unwatched_timeout``.
    """
    if given is None:
        value = (os.environ.get(UNWATCHED_TIMEOUT_ENV)
                 or conf.get("dlh_dbt", "unwatched_timeout", fallback=None))
        given = float(value) if value else DEFAULT_UNWATCHED_TIMEOUT
    return max(0.0, float(given))


def project_dir(task_id: str, given: str | None) -> str:
    """The task's dbt project: its argument, else ``$DLH_DBT_PROJECT_DIR``, else ``[dlh_dbt] project_dir``."""
    project = given or os.environ.get(PROJECT_DIR_ENV) or conf.get("dlh_dbt", "project_dir", fallback=None)
    if not project:
        raise DbtProjectException(
            f"No dbt project for task {task_id!r}: pass dbt_project_dir, or set {PROJECT_DIR_ENV} "
            "or [dlh_dbt] project_dir"
        )
    return str(project)


def check_detachable(root: Path, *, in_process: bool, what: str = "deferrable=True",
                     instead: str = "deferrable=False", store: bool = False) -> None:
    """Refuse, with the reason and the fix, to run dbt detached where a watcher could not see it."""
    if ends_worker_on_defer():
        raise DbtException(
            f"{what} runs dbt as a detached process on the worker, and KubernetesExecutor "
            f"deletes the worker pod when the task defers; use {instead} on this executor"
        )
    if in_process:
        raise DbtException(f"{what} needs a dbt process that outlives the worker; in_process=True cannot "
                           "defer")
    if not store and not shared_root_declared():  # a state store replaces the shared volume
        raise DbtException(
            f"{what} needs the runtime root {root} visible to the triggerer and to the worker that "
            f"resumes the task. Mount it on a volume shared by workers and triggerers (on a single host "
            f"it already is), then set {SHARED_ROOT_ENV}=true or [dlh_dbt] shared_runtime_root = True; "
            f"or set a state store ({STATE_STORE_ENV}=s3://bucket/prefix with its connection) that every "
            f"host reaches; otherwise use {instead}"
        )
