"""DbtOperator: any dbt command, sync or deferrable, with results, retries, links, lineage and upload."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from dlh_airflow_common.core.detached import ControlDir, DetachedSpec, copy_artifacts, launch
from dlh_airflow_common.core.exceptions import (
    DbtException,
    DbtProjectException,
    DbtTimeoutException,
    exception_from_dict,
)
from dlh_airflow_common.core.invoke import DbtTaskResult
from dlh_airflow_common.core.profiles import render_profile
from dlh_airflow_common.core.runtime import RunIdentity, default_runtime_root
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.links import DbtArtifactsLink, DbtDocsLink
from dlh_airflow_common.metrics import emit_run_metrics
from dlh_airflow_common.storage import upload_artifacts

if TYPE_CHECKING:
    from airflow.sdk import Context

# Commands whose failed nodes `dbt retry` can resume.
RESUMABLE = {"build", "run", "test", "seed", "snapshot"}
SHARED_ROOT_ENV = "DLH_DBT_SHARED_RUNTIME_ROOT"
PROJECT_DIR_ENV = "DLH_DBT_PROJECT_DIR"


def _shared_root_declared() -> bool:
    if os.environ.get(SHARED_ROOT_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return True
    return bool(conf.getboolean("dlh_dbt", "shared_runtime_root", fallback=False))


class DbtOperator(BaseOperator):
    """Run one dbt command (``build``, ``run``, ``source freshness``, ``docs generate``, ...).

    ``deferrable=True`` starts dbt as a detached process on the worker host and frees the worker
    slot; the triggerer watches that run's control dir, so the runtime root must be visible to the
    triggerer and to the worker that resumes the task (declare it with ``DLH_DBT_SHARED_RUNTIME_ROOT``).
    """

    template_fields: Sequence[str] = (
        "dbt_project_dir", "command", "select", "exclude", "selector", "vars", "env_vars",
        "schema_override", "target", "extra_args", "artifacts_destination", "target_path",
    )
    template_fields_renderers = {"vars": "json", "env_vars": "json"}
    operator_extra_links = (DbtDocsLink(), DbtArtifactsLink())
    ui_color = "#ff694b"

    def __init__(
        self,
        *,
        dbt_command: str | None = None,
        command: str | None = None,
        dbt_project_dir: str | None = None,
        conn_id: str | None = None,
        profiles_dir: str | None = None,
        target: str | None = None,
        profile_name: str | None = None,
        venv_path: str | None = None,
        dbt_executable: str | None = None,
        dbt_models: Sequence[str] | str | None = None,
        select: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        env_vars: Mapping[str, str] | None = None,
        schema_override: str | None = None,
        keep_target_artifacts: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        check_interval: float = 10.0,
        timeout: float | timedelta | None = None,
        retry_limit: int = 0,
        retry_delay: float | timedelta = 1.0,
        retry_from_failure: bool = True,
        upload_artifacts: bool = False,
        artifacts_destination: str | None = None,
        artifacts_conn_id: str | None = None,
        artifacts_bucket: str | None = None,
        dbt_docs_url: str | None = None,
        artifacts_url: str | None = None,
        runtime_root: str | None = None,
        target_path: str | None = None,
        in_process: bool = False,
        cancel_grace: float = 30.0,
        extra_args: Sequence[str] | str = (),
        **kwargs: Any,
    ) -> None:
        # `retry_delay` in seconds is the backoff base for transient dbt failures (as on DbtHook); a
        # timedelta keeps its usual BaseOperator meaning (delay between Airflow task retries).
        if isinstance(retry_delay, timedelta):
            kwargs["retry_delay"] = retry_delay
            retry_delay = 1.0
        super().__init__(**kwargs)
        if dbt_command and command and dbt_command != command:
            raise ValueError("Pass either dbt_command or command, not two different commands")
        if not (dbt_command or command):
            raise ValueError("DbtOperator needs a dbt command, e.g. command='build'")
        if (dbt_models or select) and dbt_models != select and dbt_models and select:
            raise ValueError("Pass either dbt_models or select, not both")
        self.command = str(dbt_command or command)
        self.dbt_project_dir = dbt_project_dir
        self.conn_id = conn_id
        self.profiles_dir = profiles_dir
        self.target = target
        self.profile_name = profile_name
        self.venv_path = venv_path
        self.dbt_executable = dbt_executable
        self.select = select or dbt_models
        self.exclude = exclude
        self.selector = selector
        self.vars = vars
        self.full_refresh = full_refresh
        self.env_vars = dict(env_vars or {})
        self.schema_override = schema_override
        self.keep_target_artifacts = keep_target_artifacts
        self.deferrable = deferrable
        self.check_interval = check_interval
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self.retry_limit = retry_limit
        self.transient_retry_delay = float(retry_delay)
        self.retry_from_failure = retry_from_failure
        self.upload_artifacts = upload_artifacts
        if artifacts_destination is None and artifacts_bucket:
            artifacts_destination = f"s3://{artifacts_bucket}/dbt-artifacts"
        self.artifacts_destination = artifacts_destination
        self.artifacts_conn_id = artifacts_conn_id
        self.dbt_docs_url = dbt_docs_url
        self.artifacts_url = artifacts_url
        self.runtime_root = runtime_root
        self.target_path = target_path  # a caller-owned target dir shared by tasks (e.g. for --state)
        self.in_process = in_process
        self.cancel_grace = cancel_grace
        # A string is a template rendered at run time (a list with render_template_as_native_obj).
        self.extra_args: Sequence[str] | str = extra_args if isinstance(extra_args, str) else list(extra_args)
        self._hook: DbtHook | None = None
        self._lineage: Any = None
        self._started = 0.0

    # -- helpers -------------------------------------------------------------------------------
    @property
    def dbt_command(self) -> str:
        return self.command

    def _project_dir(self) -> str:
        project = self.dbt_project_dir or os.environ.get(PROJECT_DIR_ENV) or conf.get(
            "dlh_dbt", "project_dir", fallback=None)
        if not project:
            raise DbtProjectException(
                f"No dbt project for task {self.task_id!r}: pass dbt_project_dir, or set {PROJECT_DIR_ENV} "
                "or [dlh_dbt] project_dir"
            )
        return str(project)

    def _root(self) -> Path:
        return Path(self.runtime_root) if self.runtime_root else default_runtime_root()

    @staticmethod
    def _identity(context: Context) -> RunIdentity:
        ti = context["ti"]
        return RunIdentity(ti.dag_id, ti.task_id, int(ti.try_number or 1))

    def _retry_state_dir(self, context: Context) -> Path:
        ti = context["ti"]
        safe_run = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ti.run_id))
        return self._root() / "retry_state" / ti.dag_id / ti.task_id / safe_run

    def _effective_command(self, context: Context) -> tuple[str, list[str], bool]:
        """(command, extra args, resumed): a retried try resumes with ``dbt retry`` when it can."""
        words = self.command.split()
        ti = context["ti"]
        if self.retry_from_failure and int(ti.try_number or 1) > 1 and words[:1] and words[0] in RESUMABLE:
            state = self._retry_state_dir(context)
            if (state / "run_results.json").is_file():
                self.log.info("Try %s resumes the previous try's failure with `dbt retry`: only failed and "
                              "skipped nodes run (state in %s)", ti.try_number, state)
                return "retry", ["--state", str(state)], True
            self.log.info("No state from a previous try on this host (%s); running the full command", state)
        extra = self.extra_args
        return self.command, shlex.split(extra) if isinstance(extra, str) else list(extra), False

    def _make_hook(self, context: Context, capture: Path) -> DbtHook:
        def keep(target: Path, _result: DbtTaskResult | None) -> None:
            copy_artifacts(target, capture)

        return DbtHook(
            self._project_dir(), conn_id=self.conn_id, profiles_dir=self.profiles_dir, target=self.target,
            profile_name=self.profile_name, venv_path=self.venv_path, dbt_executable=self.dbt_executable,
            env_vars=self.env_vars, retry_limit=self.retry_limit, retry_delay=self.transient_retry_delay,
            runtime_root=self.runtime_root, keep_target_artifacts=self.keep_target_artifacts,
            target_path=self.target_path or None, schema_override=self.schema_override,
            identity=self._identity(context),
            in_process=self.in_process, cancel_grace=self.cancel_grace, timeout=self.timeout,
            progress=self.log.info, artifacts_callback=keep,
        )

    # -- execution -----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        self._started = time.monotonic()
        command, extra, resumed = self._effective_command(context)
        if self.deferrable:
            self._defer(context, command, extra, resumed)
        capture = Path(tempfile.mkdtemp(prefix="dbt-artifacts-"))
        try:
            self._hook = self._make_hook(context, capture)
            try:
                result = self._hook.run_dbt_task(
                    command, None if resumed else self.select, None if resumed else self.exclude,
                    None if resumed else self.selector, self.vars, self.full_refresh, extra)
            except DbtException as exc:
                self._finish_failure(context, exc, capture)
                raise
            return self._finish_success(context, result.to_dict(), capture)
        finally:
            self._hook = None
            shutil.rmtree(capture, ignore_errors=True)

    def on_kill(self) -> None:
        """Cancel the running dbt (SIGINT, grace, SIGKILL); the hook then reports partial results."""
        if self._hook is not None:
            self._hook.cancel()

    def _check_deferrable(self) -> None:
        executor = str(conf.get("core", "executor", fallback=""))
        if "Kubernetes" in executor:
            raise DbtException(
                "deferrable=True runs dbt as a detached process on the worker, and KubernetesExecutor "
                "deletes the worker pod when the task defers; use deferrable=False on this executor"
            )
        if self.in_process:
            raise DbtException("deferrable=True needs a dbt process that outlives the worker; "
                               "in_process=True cannot defer")
        if not _shared_root_declared():
            raise DbtException(
                f"deferrable=True needs the runtime root {self._root()} visible to the triggerer and to the "
                f"worker that resumes the task. Mount it on a volume shared by workers and triggerers (on "
                f"a single host it already is), then set {SHARED_ROOT_ENV}=true or "
                "[dlh_dbt] shared_runtime_root = True; otherwise use deferrable=False"
            )

    def _defer(self, context: Context, command: str, extra: list[str], resumed: bool) -> None:
        self._check_deferrable()
        hook = DbtHook(self._project_dir(), conn_id=self.conn_id, profiles_dir=self.profiles_dir,
                       target=self.target, profile_name=self.profile_name)
        document = None
        secret_env: dict[str, str] = {}
        profile_name, target_name = self.profile_name, self.target
        if self.conn_id:
            from dlh_airflow_common.core.runtime import _read_project_yml, validate_project_dir

            project = validate_project_dir(self._project_dir())
            profile_name = profile_name or str(_read_project_yml(project).get("profile") or "default")
            rendered = render_profile(hook.get_connection_info(), profile_name=profile_name,
                                      target_name=target_name or "airflow",
                                      schema_override=self.schema_override)
            document, secret_env, target_name = rendered.document, rendered.env, rendered.target_name
        secret_env.update({k: v for k, v in self.env_vars.items() if k.startswith("DBT_ENV_SECRET_")})
        ident = self._identity(context)
        spec = DetachedSpec(
            project_dir=self._project_dir(), runtime_root=str(self._root()),
            command={"command": command, "select": None if resumed else self.select,
                     "exclude": None if resumed else self.exclude,
                     "selector": None if resumed else self.selector, "vars": self.vars,
                     "full_refresh": self.full_refresh, "extra_args": extra},
            identity={"dag_id": ident.dag_id, "task_id": ident.task_id, "try_number": ident.try_number},
            profile_name=profile_name, target_name=target_name, profile_document=document,
            profiles_dir=None if document else self.profiles_dir, schema_override=self.schema_override,
            keep_target_artifacts=self.keep_target_artifacts, target_path=self.target_path or None,
            retry_limit=self.retry_limit, retry_delay=self.transient_retry_delay,
            env_vars={k: v for k, v in self.env_vars.items() if not k.startswith("DBT_ENV_SECRET_")},
            venv_path=self.venv_path, dbt_executable=self.dbt_executable, cancel_grace=self.cancel_grace,
        )
        ctl = launch(spec, self._root() / "deferred", secret_env)
        self.log.info("dbt %s started detached (control dir %s); deferring", command, ctl.path)
        from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

        self.defer(
            trigger=DbtExecutionTrigger(
                control_dir=str(ctl.path), check_interval=self.check_interval,
                timeout_at=time.time() + self.timeout if self.timeout else None,
                cancel_grace=self.cancel_grace,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: same results and errors as a synchronous run."""
        ctl = ControlDir(Path(event["control_dir"]))
        try:
            status = event.get("status")
            if status == "success":
                return self._finish_success(context, event["result"], ctl.artifacts)
            error = event.get("error")
            if status == "timeout":
                base = exception_from_dict(error) if error else None
                exc: DbtException = DbtTimeoutException(
                    f"dbt {self.command} timed out after {self.timeout:.0f}s and was cancelled",
                    command=base.command if base else None, return_code=base.return_code if base else None,
                    failed_nodes=base.failed_nodes if base else None,
                    output_tail=base.output_tail if base else "", summary=base.summary if base else None)
            elif error:
                exc = exception_from_dict(error)
            else:
                exc = DbtException(str(event.get("message") or f"dbt run ended with status {status!r}"))
            self._finish_failure(context, exc, ctl.artifacts)
            raise exc
        finally:
            shutil.rmtree(ctl.path, ignore_errors=True)

    # -- outcome handling shared by both modes ---------------------------------------------------
    def _finish_success(self, context: Context, result: dict[str, Any], artifacts: Path) -> dict[str, Any]:
        summary = result.get("summary") or {}
        for w in summary.get("warnings") or []:
            self.log.warning("dbt warning: %s [%s] %s", w.get("unique_id"), w.get("status"),
                             (w.get("message") or "").strip())
        self._emit(context, summary.get("counts") or {}, int(result.get("attempts") or 1), True)
        self._after_run(context, artifacts)
        shutil.rmtree(self._retry_state_dir(context), ignore_errors=True)
        return result

    def _finish_failure(self, context: Context, exc: DbtException, artifacts: Path) -> None:
        counts = exc.summary.counts if exc.summary is not None else {}
        self._emit(context, counts, 1, False)
        self._after_run(context, artifacts)
        if self.retry_from_failure and self.command.split()[:1] and self.command.split()[0] in RESUMABLE \
                and (artifacts / "run_results.json").is_file():
            state = self._retry_state_dir(context)
            copy_artifacts(artifacts, state)  # kept for the next try's `dbt retry`

    def _emit(self, context: Context, counts: dict[str, int], attempts: int, success: bool) -> None:
        ti = context["ti"]
        emit_run_metrics(ti.dag_id, ti.task_id, seconds=time.monotonic() - self._started if self._started
                         else 0.0, counts=counts, attempts=attempts, success=success)

    def _after_run(self, context: Context, artifacts: Path) -> None:
        ti = context["ti"]
        if self.upload_artifacts and self.artifacts_destination:
            upload_artifacts(artifacts, self.artifacts_destination, self.artifacts_conn_id,
                             ti.dag_id, ti.task_id, str(ti.run_id), f"try{ti.try_number}")
        self._lineage = self._build_lineage(context, artifacts)

    def _build_lineage(self, context: Context, artifacts: Path) -> Any:
        """Parse lineage now: the artifacts are gone by the time OpenLineage asks for it."""
        if not (artifacts / "manifest.json").is_file():
            return None
        try:
            from airflow.providers.openlineage import conf as ol_conf
            from airflow.providers.openlineage.plugins import macros
            from openlineage.common.provider.dbt.facets import ParentRunMetadata

            from dlh_airflow_common.lineage import build_operator_lineage
        except ImportError:
            return None  # the openlineage extra is not installed
        if ol_conf.is_disabled():
            return None  # no transport configured: parsing the manifest would be wasted time
        try:
            ti = context["ti"]
            parent = ParentRunMetadata(run_id=macros.lineage_run_id(ti), job_name=macros.lineage_job_name(ti),
                                       job_namespace=macros.lineage_job_namespace())
            return build_operator_lineage(artifacts, job_namespace=ol_conf.namespace(), parent_run=parent,
                                          **self._lineage_target())
        except Exception as exc:  # lineage is best-effort, never a task failure
            self.log.warning("OpenLineage facets not built: %s", exc)
            return None

    def _lineage_target(self) -> dict[str, Any]:
        if self.conn_id:
            hook = DbtHook(self._project_dir(), conn_id=self.conn_id)
            rendered = render_profile(hook.get_connection_info(), profile_name="p",
                                      target_name="t", schema_override=self.schema_override)
            output = dict(rendered.document["p"]["outputs"]["t"])
        else:
            output = {}
        return {"profile_output": output}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage provider hook: the task's inputs/outputs; per-node events are emitted too."""
        if self._lineage is None:
            return None
        operator_lineage, node_events = self._lineage
        try:
            from airflow.providers.openlineage.plugins.listener import get_openlineage_listener

            adapter = get_openlineage_listener().adapter
            for event in node_events:
                adapter.emit(event)
        except Exception as exc:
            self.log.warning("OpenLineage per-node events not emitted: %s", exc)
        return operator_lineage
