"""DbtHook: the Airflow face of the execution core (connections in, classified results out)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from dlh_airflow_common._compat import AirflowNotFoundException
from dlh_airflow_common.airflow_errors import raised_to_airflow
from dlh_airflow_common.core.artifacts import load_catalog, load_manifest, load_run_results, load_sources
from dlh_airflow_common.core.exceptions import DbtProfileException
from dlh_airflow_common.core.invoke import ArtifactsCallback, DbtCommand, DbtInvoker, DbtTaskResult
from dlh_airflow_common.core.profile_setup import ProfileConfig, ResolvedProfile, resolve_profile
from dlh_airflow_common.core.profiles import ConnectionInfo
from dlh_airflow_common.core.runners import InProcessRunner, Runner, SubprocessRunner
from dlh_airflow_common.core.runtime import RunIdentity, validate_project_dir

log = logging.getLogger(__name__)


class DbtHook(BaseHook):
    """Run dbt Core commands for one project with a profile built from an Airflow connection."""

    hook_name = "dbt Core"
    # How errors name the project dir: the argument of the API the user called (DbtOperator sets its own).
    project_argument = "DbtHook(dbt_project_dir=...)"

    def __init__(
        self,
        dbt_project_dir: str | os.PathLike[str],
        conn_id: str | None = None,
        profiles_dir: str | None = None,
        target: str | None = None,
        profile_name: str | None = None,
        venv_path: str | None = None,
        dbt_executable: str | None = None,
        env_vars: Mapping[str, str] | None = None,
        target_path: str | None = None,
        retry_limit: int = 0,
        retry_delay: float = 1.0,
        runtime_root: str | None = None,
        keep_target_artifacts: bool = False,
        schema_override: str | None = None,
        identity: RunIdentity | None = None,
        in_process: bool = False,
        cancel_grace: float = 30.0,
        timeout: float | None = None,
        progress: Callable[[str], None] | None = None,
        artifacts_callback: ArtifactsCallback | None = None,
        partial_parse: bool = True,
        event_sink: Callable[[dict[str, Any]], None] | None = None,
        duckdb_lock_wait: float | None = None,
    ) -> None:
        super().__init__()
        if not conn_id and not profiles_dir:
            raise DbtProfileException("DbtHook needs conn_id (an Airflow connection) or profiles_dir")
        self.dbt_project_dir = str(dbt_project_dir)
        self.conn_id = conn_id
        self.profiles_dir = profiles_dir
        self.target = target
        self.profile_name = profile_name
        self.venv_path = venv_path
        self.dbt_executable = dbt_executable
        self.env_vars = dict(env_vars or {})
        self.target_path = target_path
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.runtime_root = runtime_root
        self.keep_target_artifacts = keep_target_artifacts
        self.schema_override = schema_override
        self.identity = identity
        self.in_process = in_process
        self.cancel_grace = cancel_grace
        self.timeout = timeout
        self.progress = progress
        self.artifacts_callback = artifacts_callback
        self.partial_parse = partial_parse
        self.event_sink = event_sink
        self.duckdb_lock_wait = duckdb_lock_wait  # None: $DLH_DUCKDB_LOCK_WAIT or one hour
        self.last_result: DbtTaskResult | None = None
        self._invoker: DbtInvoker | None = None
        self._connection: ConnectionInfo | None = None

    # -- connections ---------------------------------------------------------------------------
    def get_connection_info(self) -> ConnectionInfo:
        """The Airflow connection as the core sees it (looked up once); a missing one says how to fix."""
        assert self.conn_id
        if self._connection is not None:
            return self._connection
        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            raise DbtProfileException(
                f"Airflow connection {self.conn_id!r} is not defined; create it (UI, `airflow connections "
                f"add {self.conn_id} ...` or AIRFLOW_CONN_{self.conn_id.upper()}) or fix conn_id"
            ) from None
        self._connection = ConnectionInfo(
            conn_id=self.conn_id,
            conn_type=conn.conn_type or "",
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            extra=conn.extra_dejson or {},
        )
        return self._connection

    def profile_config(self) -> ProfileConfig:
        """Where this hook's profile comes from; every mode (sync, detached, lineage) starts here."""
        connection = self.get_connection_info() if self.conn_id else None
        return ProfileConfig(
            connection=connection,
            profiles_dir=None if connection else self.profiles_dir,
            profile_name=self.profile_name,
            target_name=self.target,
            schema_override=self.schema_override,
        )

    def resolve_profile(self) -> ResolvedProfile:
        """The rendered profile and its secret environment, as a dbt process of this hook gets them."""
        return resolve_profile(self.profile_config(), self.project_path(), self.env_vars)

    def project_path(self) -> Path:
        """The project dir, checked: a missing one is a DbtProjectException naming the argument."""
        return validate_project_dir(self.dbt_project_dir, self.project_argument)

    def _runner(self) -> Runner:
        if self.in_process:
            return InProcessRunner()
        return SubprocessRunner(self.venv_path, self.dbt_executable, cancel_grace=self.cancel_grace)

    # -- running -------------------------------------------------------------------------------
    @raised_to_airflow()
    def run_dbt_task(
        self,
        command: str,
        select: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        extra_args: Sequence[str] = (),
        allow_empty_selection: bool = False,
    ) -> DbtTaskResult:
        """Run one dbt command; raises a classified DbtException when it fails.

        A build/run/test/seed/snapshot whose selection runs no node fails (DbtEmptySelectionException)
        unless ``allow_empty_selection``.
        """
        self._invoker = DbtInvoker(
            self.project_path(),
            self.profile_config(),
            runner=self._runner(),
            runtime_root=self.runtime_root,
            identity=self.identity,
            keep_target_artifacts=self.keep_target_artifacts,
            target_path=self.target_path,
            retry_limit=self.retry_limit,
            retry_delay=self.retry_delay,
            env_vars=self.env_vars,
            timeout=self.timeout,
            progress=self.progress,
            partial_parse=self.partial_parse,
            artifacts_callback=self.artifacts_callback,
            event_sink=self.event_sink,
            duckdb_lock_wait=self.duckdb_lock_wait,
        )
        try:
            self.last_result = self._invoker.invoke(
                DbtCommand(command, select, exclude, selector, vars, full_refresh, tuple(extra_args),
                           allow_empty_selection)
            )
            return self.last_result
        finally:
            self._invoker = None

    def list_nodes(
        self,
        select: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The unique ids dbt selects (``dbt ls``): selection stays dbt's grammar, resolved by dbt."""
        listed: list[str] = []

        def collect(event: dict[str, Any]) -> None:
            info = event.get("info") or {}
            if info.get("name") not in {"PrintEvent", "ListCmdOut"}:
                return
            text = str((event.get("data") or {}).get("msg") or info.get("msg") or "")
            if text.startswith("{"):
                try:
                    row = json.loads(text)
                except ValueError:
                    return
                if isinstance(row, dict) and row.get("unique_id"):
                    listed.append(str(row["unique_id"]))

        previous, self.event_sink = self.event_sink, collect
        try:
            self.run_dbt_task("ls", select, exclude, selector, vars,
                              extra_args=[*extra_args, "--output", "json", "--output-keys", "unique_id"])
        finally:
            self.event_sink = previous
        return list(dict.fromkeys(listed))

    def cancel(self) -> None:
        """Cancel the running command, if any (SIGINT to dbt, grace period, SIGKILL)."""
        if self._invoker is not None:
            self._invoker.cancel()

    # -- artifacts of the last run -------------------------------------------------------------
    def _target_dir(self) -> Path | None:
        if self.last_result is not None and self.last_result.target_dir is not None:
            return self.last_result.target_dir
        if self.target_path:
            return Path(self.target_path)
        log.warning("No dbt artifacts to read: the last run's target dir was removed; "
                    "set keep_target_artifacts=True or target_path to keep them")
        return None

    def get_manifest(self) -> dict[str, Any]:
        target = self._target_dir()
        return load_manifest(target) if target else {}

    def get_run_results(self) -> dict[str, Any]:
        target = self._target_dir()
        return load_run_results(target) if target else {}

    def get_sources(self) -> dict[str, Any]:
        target = self._target_dir()
        return load_sources(target) if target else {}

    def get_catalog(self) -> dict[str, Any]:
        target = self._target_dir()
        return load_catalog(target) if target else {}
