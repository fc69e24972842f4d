"""DbtOperator: any dbt command, sync or deferrable; the other concerns live in sibling modules.

``settings`` (deployment checks), ``deferral`` (detached runs), ``retry_state`` (``dbt retry`` across
Airflow tries), ``reporting`` (metrics, upload, lineage); profiles come from ``DbtHook``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dlh_airflow_common import assets
from dlh_airflow_common._compat import AirflowSkipException
from dlh_airflow_common.airflow_errors import raised_to_airflow
from dlh_airflow_common.core.detached import ControlDir, copy_artifacts
from dlh_airflow_common.core.exceptions import DbtException
from dlh_airflow_common.core.invoke import DbtCommand, DbtTaskResult
from dlh_airflow_common.core.retention import Retention, maybe_prune
from dlh_airflow_common.core.runtime import RunIdentity
from dlh_airflow_common.core.safefs import check_inside
from dlh_airflow_common.core.store_control import StoreControl, control_key
from dlh_airflow_common.core.stream import NodeIndex
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.lineage import emit_node_events
from dlh_airflow_common.links import DbtArtifactsLink, DbtDocsLink
from dlh_airflow_common.operators import producer, settings, streamed
from dlh_airflow_common.operators.deferral import (
    DetachedRun,
    exception_from_event,
    watch_briefly,
)
from dlh_airflow_common.operators.failed_builds import emitted_by_teardown, has_teardown
from dlh_airflow_common.operators.reporting import Reporter
from dlh_airflow_common.operators.retry_state import Plan, RetryState
from dlh_airflow_common.state_store import StoreSetting, open_store

if TYPE_CHECKING:
    from airflow.sdk import Context

# A deferred task resumes no sooner than this after deferring (see DbtExecutionTrigger): measured,
# the deferring task process lingers ~5 s before its executor event reaches the scheduler, and 3.3.2
# fails a resumed try that is queued or running by then (apache/airflow#71580, #72716).
MIN_DEFERRAL_SECONDS = 15.0
# A streamed producer watches dbt from its worker this long before it defers. A resumed task costs a new
# worker process and, for a deferral younger than MIN_DEFERRAL_SECONDS, Airflow's resume floor
# (docs/airflow-upstream.md #5): up to 15 s on the DAG run, paid by every build that ends soon after the
# deferral. Two minutes of a worker slot keeps that under an eighth of any build that defers.
PRODUCER_DEFER_AFTER = 120.0


_UNSET = object()


class DbtOperator(BaseOperator):
    """Run one dbt command (``build``, ``run``, ``source freshness``, ``docs generate``, ...).

    ``deferrable=True`` starts dbt as a detached process on the worker host and frees the worker
    slot; the triggerer watches that run's control dir, so the runtime root must be visible to the
    triggerer and to the worker that resumes the task (declare it with ``DLH_DBT_SHARED_RUNTIME_ROOT``),
    or a state store (``state_store=s3://...``) must carry it between hosts.
    """

    template_fields: Sequence[str] = (
        "dbt_project_dir", "command", "select", "exclude", "selector", "vars", "env_vars",
        "schema_override", "target", "extra_args", "artifacts_destination", "target_path", "only_nodes",
        "docs_location",
    )
    template_fields_renderers = {"vars": "json", "env_vars": "json"}
    operator_extra_links = (DbtDocsLink(), DbtArtifactsLink())
    ui_color = "#ff694b"

    # Immutable defaults as class attributes: an instance holds only the values that differ (see
    # __init__). Mutable values (lists, dicts) are always the instance's own.
    dbt_project_dir: str | None = None
    conn_id: str | None = None
    profiles_dir: str | None = None
    target: str | None = None
    profile_name: str | None = None
    venv_path: str | None = None
    dbt_executable: str | None = None
    select: Sequence[str] | str | None = None
    exclude: Sequence[str] | str | None = None
    selector: str | None = None
    vars: Mapping[str, Any] | str | None = None
    full_refresh: bool = False
    allow_empty_selection: bool = False
    schema_override: str | None = None
    keep_target_artifacts: bool = False
    check_interval: float = 10.0
    timeout: float | None = None
    retry_limit: int = 0
    transient_retry_delay: float = 1.0
    retry_from_failure: bool = True
    upload_artifacts: bool = False
    artifacts_destination: str | None = None
    artifacts_conn_id: str | None = None
    dbt_docs_url: str | None = None
    artifacts_url: str | None = None
    publish_docs: bool = False
    docs_location: str | None = None
    docs_conn_id: str | None = None
    runtime_root: str | None = None
    target_path: str | None = None
    in_process: bool = False
    cancel_grace: float = 30.0
    unwatched_timeout: float | None = None
    defer_after: float = MIN_DEFERRAL_SECONDS
    retention_max_age: float | None = None
    retention_keep: int | None = None
    dbt_unique_id: str | None = None
    only_nodes: Sequence[str] | str | None = None
    stream_nodes: bool = False
    stream_from: str | None = None
    state_store: str | None = None
    state_store_conn_id: str | None = None
    sync_producer: bool | None = None
    emit_assets: bool = True
    # A producer of a mapped node task: map index -> (unique id, tests), set by the rendering on the
    # parsed DAG (never serialized) and written into the run's stream at launch for the node triggers.
    node_index: NodeIndex | None = None
    _producer: producer.SyncProducer | None = None  # a sync producer's writes to the state store
    _hook: DbtHook | None = None
    _watching: ControlDir | None = None  # the detached run this task watches before it defers
    _lineage: Any = None
    # Set by every __init__: command, env_vars, deferrable, extra_args, node_tests.
    command: str
    env_vars: dict[str, str]
    deferrable: bool
    extra_args: Sequence[str] | str
    node_tests: list[str]

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
        allow_empty_selection: bool = False,
        env_vars: Mapping[str, str] | None = None,
        schema_override: str | None = None,
        keep_target_artifacts: bool = False,
        deferrable: bool | None = None,
        check_interval: float = 10.0,
        timeout: float | timedelta | None = None,
        retry_limit: int = 0,
        transient_retry_delay: float = 1.0,
        retry_from_failure: bool = True,
        upload_artifacts: bool = False,
        artifacts_destination: str | None = None,
        artifacts_conn_id: str | None = None,
        artifacts_bucket: str | None = None,
        dbt_docs_url: str | None = None,
        artifacts_url: str | None = None,
        publish_docs: bool | None = None,
        docs_location: str | None = None,
        docs_conn_id: str | None = None,
        runtime_root: str | None = None,
        target_path: str | None = None,
        in_process: bool = False,
        cancel_grace: float = 30.0,
        unwatched_timeout: float | timedelta | None = None,
        defer_after: float | timedelta | None = None,
        extra_args: Sequence[str] | str = (),
        retention_max_age: float | timedelta | None = None,
        retention_keep: int | None = None,
        dbt_unique_id: str | None = None,
        only_nodes: Sequence[str] | str | None = None,
        stream_nodes: bool = False,
        stream_from: str | None = None,
        node_tests: Sequence[str] = (),
        state_store: str | None = None,
        state_store_conn_id: str | None = None,
        sync_producer: bool | None = None,
        emit_assets: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if dbt_command and command and dbt_command != command:
            raise ValueError("Pass either dbt_command or command, not two different commands")
        if not (dbt_command or command):
            raise ValueError("DbtOperator needs a dbt command, e.g. command='build'")
        if (dbt_models or select) and dbt_models != select and dbt_models and select:
            raise ValueError("Pass either dbt_models or select, not both")
        command = str(dbt_command or command)
        if artifacts_destination is None and artifacts_bucket:
            artifacts_destination = f"s3://{artifacts_bucket}/dbt-artifacts"
        own: dict[str, Any] = {
            "command": command, "dbt_project_dir": dbt_project_dir, "conn_id": conn_id,
            "profiles_dir": profiles_dir, "target": target, "profile_name": profile_name,
            "venv_path": venv_path, "dbt_executable": dbt_executable, "select": select or dbt_models,
            "exclude": exclude, "selector": selector, "vars": vars, "full_refresh": full_refresh,
            # A build/run/test/seed/snapshot whose selection matches nothing fails unless this is set.
            "allow_empty_selection": allow_empty_selection,
            "env_vars": dict(env_vars or {}), "schema_override": schema_override,
            "keep_target_artifacts": keep_target_artifacts,
            "deferrable": settings.default_deferrable() if deferrable is None else deferrable,
            "check_interval": check_interval,
            "timeout": timeout.total_seconds() if isinstance(timeout, timedelta) else timeout,
            # Backoff base (seconds) for transient dbt failures inside one try; Airflow's own
            # `retry_delay` keeps its meaning: the delay between task retries.
            "retry_limit": retry_limit, "transient_retry_delay": float(transient_retry_delay),
            "retry_from_failure": retry_from_failure, "upload_artifacts": upload_artifacts,
            "artifacts_destination": artifacts_destination, "artifacts_conn_id": artifacts_conn_id,
            "dbt_docs_url": dbt_docs_url, "artifacts_url": artifacts_url,
            # `docs generate` publishes its site for the API server's dbt Docs (docs.py) unless told not to.
            "publish_docs": command.split()[:2] == ["docs", "generate"] if publish_docs is None
            else publish_docs,
            "docs_location": docs_location, "docs_conn_id": docs_conn_id, "runtime_root": runtime_root,
            "target_path": target_path,  # a caller-owned target dir shared by tasks (e.g. for --state)
            "in_process": in_process, "cancel_grace": cancel_grace,
            # A deferred run no trigger has watched for this long is cancelled: Airflow < 3.3 never tells
            # the trigger its task was killed. None: DLH_DBT_UNWATCHED_TIMEOUT / [dlh_dbt], else 180 s.
            "unwatched_timeout": unwatched_timeout.total_seconds() if isinstance(unwatched_timeout, timedelta)
            else unwatched_timeout,
            # A deferrable task watches its dbt run itself this long before it defers: a resumed task
            # waits at least MIN_DEFERRAL_SECONDS, so a shorter command ends sooner without deferring.
            # A streamed producer watches longer (PRODUCER_DEFER_AFTER): its DAG run ends when it does.
            "defer_after": (PRODUCER_DEFER_AFTER if stream_nodes else MIN_DEFERRAL_SECONDS)
            if defer_after is None else
            defer_after.total_seconds() if isinstance(defer_after, timedelta) else float(defer_after),
            # A string is a template rendered at run time (a list with render_template_as_native_obj).
            "extra_args": extra_args if isinstance(extra_args, str) else list(extra_args),
            # What old run dirs, retry state and control dirs to keep (see core/retention.py).
            "retention_max_age": retention_max_age.total_seconds() if isinstance(retention_max_age, timedelta)
            else retention_max_age,
            "retention_keep": retention_keep,
            # The dbt node this task runs (rendered node tasks; its "dbt Docs" link opens that node), and the
            # nodes a run chose at run time (templated): a node task whose node is not among them skips.
            "dbt_unique_id": dbt_unique_id, "only_nodes": only_nodes,
            # Streamed per-node mode: the producer builds the selection in one detached dbt process and
            # streams node results; a node task (stream_from=<producer task id>) reflects its node's.
            "stream_nodes": stream_nodes, "stream_from": stream_from, "node_tests": list(node_tests),
            # Where state read by other hosts goes (None: DLH_DBT_STATE_STORE / [dlh_dbt]); a producer
            # runs sync when asked, or when nothing detached would survive or be seen (producer.runs_sync).
            "state_store": state_store, "state_store_conn_id": state_store_conn_id,
            "sync_producer": sync_producer,
            # An asset event per node this task built (docs/assets.md); node tasks get their asset from
            # the renderer, any other building task an alias named after it.
            "emit_assets": emit_assets,
        }
        # Straight into the instance dict, and only what differs from the class defaults below: a
        # rendered project makes thousands of these, and BaseOperator.__setattr__ (converter lookup,
        # init-kwargs and XComArg bookkeeping, none of which applies to these attributes before
        # __init__ returns) made this operator cost 1.7 EmptyOperators (bench/render.py).
        self.__dict__.update({k: v for k, v in own.items() if _DEFAULTS.get(k, _UNSET) != v})
        if stream_from:
            streamed.born_in_triggerer(self)
        if stream_nodes and self.has_dag():
            streamed.only_producer_of_its_dag(self)
        if emit_assets and dbt_unique_id is None and assets.builds(command):
            self.outlets = [*self.outlets, assets.task_alias(self.dag.dag_id if self.has_dag() else None,
                                                              self.task_id)]

    # -- helpers -------------------------------------------------------------------------------
    @property
    def dbt_command(self) -> str:
        return self.command

    def _root(self) -> Path:
        return settings.runtime_root(self.runtime_root)

    def _retry_state(self, context: Context) -> RetryState:
        return RetryState.for_task(self._root(), context["ti"],
                                   self._state_store() if self.retry_from_failure else None)

    def _plan(self, context: Context) -> Plan:
        ti = context["ti"]
        return self._retry_state(context).plan(self.command, self.extra_args, int(ti.try_number or 1),
                                               self.retry_from_failure, self.log)

    def _dbt_command(self, plan: Plan) -> DbtCommand:
        """The dbt command line of this try (a resumed try selects through its state instead)."""
        fresh = not plan.resumed
        return DbtCommand(plan.command, self.select if fresh else None, self.exclude if fresh else None,
                          self.selector if fresh else None, self.vars, self.full_refresh,
                          tuple(plan.extra_args), self.allow_empty_selection)

    def _make_hook(self, context: Context, capture: Path | None = None) -> DbtHook:
        """The task's one hook: it looks the connection up once for the run, deferral and lineage."""
        def keep(target: Path, _result: DbtTaskResult | None) -> None:
            if capture is not None:
                copy_artifacts(target, capture)

        ti = context["ti"]
        hook = DbtHook(
            settings.project_dir(self.task_id, self.dbt_project_dir), conn_id=self.conn_id,
            profiles_dir=self.profiles_dir, target=self.target, profile_name=self.profile_name,
            venv_path=self.venv_path, dbt_executable=self.dbt_executable, env_vars=self.env_vars,
            retry_limit=self.retry_limit, retry_delay=self.transient_retry_delay,
            runtime_root=self.runtime_root, keep_target_artifacts=self.keep_target_artifacts,
            target_path=self.target_path or None, schema_override=self.schema_override,
            identity=RunIdentity(ti.dag_id, ti.task_id, int(ti.try_number or 1)),
            in_process=self.in_process, cancel_grace=self.cancel_grace, timeout=self.timeout,
            progress=self.log.info, artifacts_callback=keep,
        )
        hook.project_argument = "DbtOperator(dbt_project_dir=...)"
        return hook

    def _reporter(self, context: Context, hook: DbtHook) -> Reporter:
        output = hook.resolve_profile().output(hook.dbt_project_dir) if self.conn_id else {}
        return Reporter(context["ti"], self.log, self._retry_state(context),
                        self.artifacts_destination if self.upload_artifacts else None,
                        self.artifacts_conn_id, output,
                        (self.docs_location, self.docs_conn_id) if self.publish_docs else None)

    def _report_failure(self, context: Context, exc: DbtException, artifacts: Path, seconds: float,
                        hook: DbtHook | None = None) -> Any:
        """Report a failed try; an error while reporting is logged, never raised in place of ``exc``."""
        try:
            hook = hook or self._make_hook(context)
            self._emit_assets(context, hook, artifacts, failed=True)  # before the retry state moves
            reporter = self._reporter(context, hook)
            return reporter.failure(exc, artifacts, seconds, self.command, self.retry_from_failure)
        except Exception as secondary:
            self.log.warning("Could not report this failure (metrics, artifacts, lineage, retry state): "
                             "%s: %s", type(secondary).__name__, secondary)
            return None

    # -- execution -----------------------------------------------------------------------------
    @raised_to_airflow()
    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_unless_chosen()
        if self.stream_from and int(context["ti"].try_number or 1) == 1:
            streamed.watch_from_worker(self, context)  # defers, or reschedules until the producer runs
        if self.stream_nodes:
            if self.node_index is not None:
                streamed.hint_naming_hook(self)
            with streamed.reporting_early_failure(self, context):
                return self._run(context)
        return self._run(context)

    def _run(self, context: Context) -> dict[str, Any]:
        started = time.time()
        maybe_prune(self._root(), self._retention())
        plan = self._plan(context)
        store = self._state_store() if self.stream_nodes else None
        sync_producer = self.stream_nodes and producer.runs_sync(self.sync_producer, store)
        if (self.deferrable or self.stream_nodes) and not sync_producer:
            return self._defer(context, plan, started, store)
        capture = Path(tempfile.mkdtemp(prefix="dbt-artifacts-"))
        ended = "failed"
        try:
            self._hook = hook = self._make_hook(context, capture)
            if sync_producer:
                self.log.info("Producer runs dbt in this task (sync) and streams node results to %s",
                              store.url if store else None)
                self._producer = producer.SyncProducer.start(store, context, hook, self._retention(),
                                                             self.node_index)
            command = self._dbt_command(plan)
            try:
                result = hook.run_dbt_task(command.command, command.select, command.exclude,
                                           command.selector, command.vars, command.full_refresh,
                                           command.extra_args, command.allow_empty_selection)
            except DbtException as exc:
                self._lineage = self._report_failure(context, exc, capture, time.time() - started, hook)
                raise
            ended = "success"
            out = result.to_dict()
            self._emit_assets(context, hook, capture)  # before the report clears an earlier try's state
            self._lineage = self._reporter(context, hook).success(out, capture, time.time() - started)
            return out
        finally:
            if self._producer is not None:
                self._producer.end(ended, self.log)
            self._hook = self._producer = None
            shutil.rmtree(capture, ignore_errors=True)

    def _emit_assets(self, context: Context, hook: DbtHook, artifacts: Path, failed: bool = False) -> None:
        """Asset events for the nodes this try built; best-effort like lineage (a warning, not a failure).

        Airflow drops a failed try's events: when a failed-builds teardown follows this task, the try
        keeps them for it (``operators.failed_builds``). A node task keeps none: its node did not
        pass, and it built nothing else.
        """
        if not self.emit_assets or (failed and (self.dbt_unique_id is not None or not has_teardown(self))):
            return
        # A try that resumed with `dbt retry` built only what failed: what the failed try built is in its
        # retry state, and Airflow registered none of it then (unless the teardown did, before a clear).
        later = int(context["ti"].try_number or 1) > 1
        earlier = self._retry_state(context).path if later else None
        built = [p for p in (earlier, artifacts) if p]
        try:
            done = frozenset(emitted_by_teardown(self, context)) if later and self.dbt_unique_id is None \
                else frozenset()
            if failed:
                assets.keep_for_teardown(context, self.outlets, built, hook, self.log, done)
            else:
                assets.emit_built(context, self.outlets, built, hook, self.log, self.dbt_unique_id, done)
        except Exception as exc:
            self.log.warning("No asset events: %s: %s", type(exc).__name__, exc)

    def _retention(self) -> Retention:
        return settings.retention(self.retention_max_age, self.retention_keep)

    def _state_store(self) -> StoreSetting | None:
        return settings.state_store(self.state_store, self.state_store_conn_id)

    def _skip_unless_chosen(self) -> None:
        if self.only_nodes is None or self.dbt_unique_id is None:
            return
        chosen = [self.only_nodes] if isinstance(self.only_nodes, str) else list(self.only_nodes)
        if self.dbt_unique_id not in chosen:
            raise AirflowSkipException(f"{self.dbt_unique_id} is not selected in this run "
                                       f"({len(chosen)} node(s) are)")

    def on_kill(self) -> None:
        """Cancel the running dbt (SIGINT, grace, SIGKILL); the hook then reports partial results."""
        if self._producer is not None:
            self._producer.cancel()
        if self._hook is not None:
            self._hook.cancel()
        if self._watching is not None:
            self._watching.abandon()  # the supervisor stops dbt and removes the dirs

    def _defer(self, context: Context, plan: Plan, started: float,
               store: StoreSetting | None = None) -> dict[str, Any]:
        if self.stream_nodes:  # named as the user asked for it: DbtProject(execution="streamed")
            settings.check_detachable(self._root(), in_process=self.in_process, what='execution="streamed"',
                                      instead='execution="isolated"', store=store is not None)
        else:
            store = self._state_store()  # the control dir is mirrored there for the trigger and the resume
            settings.check_detachable(self._root(), in_process=self.in_process, store=store is not None)
        hook = self._make_hook(context)
        in_store = producer.launch_in_store(store, context, self._retention()) if store is not None else None
        # the run's status, progress and artifacts for its trigger and resume on any host; a producer's only
        # where its trigger may not see its control dir (its node results go to the store either way)
        mirror = in_store is not None and (not self.stream_nodes or not settings.shared_root_declared())
        mirrored = control_key(in_store[1][-1]) if in_store is not None and mirror else ()
        identity = hook.identity or RunIdentity()
        run = DetachedRun(
            project_dir=hook.dbt_project_dir, runtime_root=self._root(), command=self._dbt_command(plan),
            identity=identity, profile=hook.resolve_profile(), env_vars=self.env_vars,
            keep_target_artifacts=self.keep_target_artifacts, target_path=self.target_path or None,
            retry_limit=self.retry_limit, retry_delay=self.transient_retry_delay,
            venv_path=self.venv_path, dbt_executable=self.dbt_executable, cancel_grace=self.cancel_grace,
            unwatched_timeout=settings.unwatched_timeout(self.unwatched_timeout),
            stream_to=streamed.producer_dir(self._root(), context) if self.stream_nodes else None,
            store=store, store_prefix=in_store[1] if in_store else (), control_key=mirrored,
            node_index=self.node_index if self.stream_nodes else None,
        )
        ctl = run.launch()
        self.log.info("dbt %s started detached (control dir %s)", plan.command, ctl.path)
        self._watching = ctl
        # `timeout` counts from the launch, watched here or from the trigger: the watch stops at it
        timeout_at = started + self.timeout if self.timeout else None
        watch = self.defer_after if timeout_at is None else \
            max(0.0, min(self.defer_after, timeout_at - time.time()))
        try:
            status, relayed = watch_briefly(ctl, watch, self.log.info)
        finally:
            self._watching = None
        if status is not None:
            self.log.info("dbt ended within %.0fs: reporting without deferring", self.defer_after)
            return self._complete(context, ctl.outcome(status, started))
        self.log.info("dbt still running after %.0fs; deferring", watch)
        from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

        self.defer(
            trigger=DbtExecutionTrigger(
                control_dir=str(ctl.path), check_interval=self.check_interval,
                timeout_at=timeout_at, cancel_grace=self.cancel_grace,
                started_at=started, resume_not_before=time.time() + MIN_DEFERRAL_SECONDS,
                # through the store, progress comes in objects: the trigger relays them from the first
                progress_offset=0 if mirrored else relayed,
                state_store=store.url if mirrored and store else None,
                state_store_conn_id=store.conn_id if mirrored and store else None,
                store_key=list(mirrored) or None,
            ),
            method_name="execute_complete",
        )

    @raised_to_airflow()
    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: same results, errors and metrics as a synchronous run."""
        return self._complete(context, event)

    def _complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if "outcome" in event:  # a node task of the streamed mode
            if streamed.outcome(event):
                return self._run(context)  # the producer did not build the node: build it here
            return {"unique_id": self.dbt_unique_id, "outcome": event["outcome"]}
        if event.get("store_key"):
            return self._complete_from_store(context, event)
        ctl = ControlDir(Path(event["control_dir"]))
        try:
            return self._report(context, event, ctl.artifacts)
        finally:
            if not self.stream_nodes:  # a producer's dir outlives it: late node tasks still read it
                ctl.remove()

    def _complete_from_store(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """A run watched through the state store: its artifacts come from there, on any host."""
        store = self._state_store()
        if store is None:
            raise DbtException("This task's run was watched through a state store, and none is set now")
        ctl = StoreControl(open_store(store), tuple(event["store_key"]))
        self.log.info("State store requests of this run: %s", event.get("store_requests"))
        artifacts = Path(tempfile.mkdtemp(prefix="dbt-artifacts-"))
        try:
            return self._report(context, event, ctl.fetch_artifacts(artifacts))
        finally:
            shutil.rmtree(artifacts, ignore_errors=True)
            ctl.remove()
            self._remove_local_dir(event.get("local_dir"))

    def _remove_local_dir(self, local: str | None) -> None:
        """Resumed on the launching host: the supervisor's own dir goes too (it keeps it when dbt ended
        before a `watched` stamp came through the store); elsewhere, retention prunes it."""
        if not local or self.stream_nodes:  # a producer's dir lives in its stream dir, with its run
            return
        deferred = self._root() / "deferred"
        try:
            path = check_inside(deferred, Path(local))
        except DbtException:
            return
        if path.parent == deferred and path.is_dir():
            ControlDir(path).remove()

    def _report(self, context: Context, event: dict[str, Any], artifacts: Path) -> dict[str, Any]:
        """Same results, errors and metrics as a synchronous run, from a detached run's outcome."""
        seconds = time.time() - float(event.get("started_at") or time.time())
        if event.get("status") == "success":
            hook = self._make_hook(context)
            self._emit_assets(context, hook, artifacts)  # before the report clears an earlier try's state
            self._lineage = self._reporter(context, hook).success(event["result"], artifacts, seconds)
            return dict(event["result"])
        exc = exception_from_event(event, self.command, self.timeout)
        self._lineage = self._report_failure(context, exc, artifacts, seconds)
        raise exc

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage provider hook: the task's inputs/outputs; per-node events are emitted too."""
        if self._lineage is None:
            return None
        operator_lineage, node_events = self._lineage
        emit_node_events(node_events)
        return operator_lineage


# What DbtOperator's class holds as defaults (immutable values only; a value equal to its default,
# e.g. 10 for 10.0, is not stored).
_DEFAULTS: dict[str, Any] = {k: v for k, v in vars(DbtOperator).items() if not k.startswith("__")
                             and (v is None or isinstance(v, bool | int | float | str))}
