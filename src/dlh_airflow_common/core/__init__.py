"""The Airflow-free dbt execution core: runtime, profiles, runners, artifacts, errors."""

from dlh_airflow_common.core.artifacts import RunSummary, load_artifact, summarize
from dlh_airflow_common.core.exceptions import (
    DbtCancelledException,
    DbtCompilationException,
    DbtConnectionAuthException,
    DbtConnectionException,
    DbtDuckDBLockedException,
    DbtException,
    DbtProfileException,
    DbtProjectException,
    DbtRuntimeException,
    DbtRuntimeRootException,
    DbtTestFailure,
    DbtTimeoutException,
)
from dlh_airflow_common.core.invoke import DbtCommand, DbtInvoker, DbtTaskResult
from dlh_airflow_common.core.profile_setup import ProfileConfig, ResolvedProfile, resolve_profile
from dlh_airflow_common.core.profiles import ConnectionInfo
from dlh_airflow_common.core.runners import InProcessRunner, SubprocessRunner
from dlh_airflow_common.core.runtime import DbtRuntime, RunIdentity, project_dir_from_dag_file

__all__ = [
    "ConnectionInfo",
    "DbtCancelledException",
    "DbtCommand",
    "DbtCompilationException",
    "DbtConnectionAuthException",
    "DbtConnectionException",
    "DbtDuckDBLockedException",
    "DbtException",
    "DbtInvoker",
    "DbtProfileException",
    "DbtProjectException",
    "DbtRuntime",
    "DbtRuntimeException",
    "DbtRuntimeRootException",
    "DbtTaskResult",
    "DbtTestFailure",
    "DbtTimeoutException",
    "InProcessRunner",
    "ProfileConfig",
    "ResolvedProfile",
    "RunIdentity",
    "RunSummary",
    "SubprocessRunner",
    "load_artifact",
    "project_dir_from_dag_file",
    "resolve_profile",
    "summarize",
]
