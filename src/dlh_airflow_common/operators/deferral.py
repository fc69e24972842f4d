"""Deferrable mode: start dbt detached on the worker host, then rebuild its outcome from the event.

The spec written for the supervisor holds no secret values: the profile document references
``DBT_ENV_SECRET_*`` variables, which travel only in the supervisor's environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.detached import TERMINAL, WATCHED_STAMP_SECONDS, ControlDir, DetachedSpec, launch
from dlh_airflow_common.core.exceptions import (
    DbtCancelledException,
    DbtException,
    DbtTimeoutException,
    exception_from_dict,
)
from dlh_airflow_common.core.invoke import DbtCommand
from dlh_airflow_common.core.profile_setup import ResolvedProfile, plain_env
from dlh_airflow_common.core.runtime import RunIdentity
from dlh_airflow_common.core.stream import NodeIndex
from dlh_airflow_common.state_store import StoreSetting, supervisor_env


@dataclass(frozen=True)
class DetachedRun:
    """What the operator passes to start one detached dbt command."""

    project_dir: str
    runtime_root: Path
    command: DbtCommand
    identity: RunIdentity
    profile: ResolvedProfile
    env_vars: dict[str, str]
    keep_target_artifacts: bool = False
    target_path: str | None = None
    retry_limit: int = 0
    retry_delay: float = 1.0
    venv_path: str | None = None
    dbt_executable: str | None = None
    cancel_grace: float = 30.0
    unwatched_timeout: float = 0.0  # cancel when no trigger has watched for this long (0: never)
    stream_to: Path | None = None  # a producer: its DAG run's stream dir, where node results stream
    store: StoreSetting | None = None  # a producer with a state store: node results go there instead
    store_prefix: tuple[str, ...] = ()  # this launch's prefix in the store
    control_key: tuple[str, ...] = ()  # a deferred run mirrored to the store: its key (core.store_control)
    node_index: NodeIndex | None = None  # a producer of a mapped node task: its nodes

    def launch(self) -> ControlDir:
        """Write the spec (0600, in a 0700 control dir) and start the supervisor; return its dir."""
        c, ident, profile = self.command, self.identity, self.profile
        spec = DetachedSpec(
            project_dir=self.project_dir, runtime_root=str(self.runtime_root),
            command={"command": c.command, "select": c.select, "exclude": c.exclude, "selector": c.selector,
                     "vars": c.vars, "full_refresh": c.full_refresh, "extra_args": list(c.extra_args),
                     "allow_empty_selection": c.allow_empty_selection},
            identity={"dag_id": ident.dag_id, "task_id": ident.task_id, "try_number": ident.try_number},
            profile_name=profile.profile_name, target_name=profile.target_name,
            profile_document=profile.rendered.document if profile.rendered else None,
            profiles_dir=str(profile.user_profiles_dir) if profile.user_profiles_dir else None,
            keep_target_artifacts=self.keep_target_artifacts, target_path=self.target_path,
            retry_limit=self.retry_limit, retry_delay=self.retry_delay, env_vars=plain_env(self.env_vars),
            venv_path=self.venv_path, dbt_executable=self.dbt_executable, cancel_grace=self.cancel_grace,
            unwatched_timeout=self.unwatched_timeout, stream_nodes=self.stream_to is not None,
        )
        secret_env = dict(profile.secret_env)
        if self.store is not None and (self.stream_to is not None or self.control_key):
            spec.store_url, spec.store_protocol = self.store.url, self.store.protocol
            spec.store_prefix = list(self.store_prefix) if self.stream_to is not None else None
            spec.control_key = list(self.control_key) or None
            secret_env.update(supervisor_env(self.store))  # its credentials: the environment only
        return launch(spec, self.runtime_root, secret_env, stream=self.stream_to, node_index=self.node_index)


POLL_SECONDS = 0.5


def watch_briefly(ctl: ControlDir, seconds: float,
                  relay: Callable[[str], None]) -> tuple[dict[str, Any] | None, int]:
    """Watch a detached run from the task's own process for up to ``seconds`` before it defers.

    A deferred task resumes no sooner than ``MIN_DEFERRAL_SECONDS`` after deferring (an Airflow race),
    so a short dbt command is better seen out here. Returns the run's final status if it ended in
    time (else None) and how much of its progress log was relayed, for the trigger to go on from.
    Anything but a clean end (a lost supervisor, a timeout) is left to the trigger, which handles it.
    """
    deadline, stamped, offset, seen = time.monotonic() + seconds, -WATCHED_STAMP_SECONDS, 0, None
    try:
        while True:
            if time.monotonic() - stamped >= WATCHED_STAMP_SECONDS:
                stamped = time.monotonic()
                ctl.mark_watched()
            stamp = ctl.status_stamp()
            status = ctl.read_status() if stamp != seen else None
            vanished, seen = seen is not None and stamp is None, stamp
            lines, offset = ctl.progress_since(offset)  # after the status: a final one's summary is in
            for line in lines:
                relay(line)
            if status is not None and status.get("state") in TERMINAL:
                return status, offset
            if vanished or ctl.abandoned_flag.exists():
                # on_kill abandoned the run (Airflow's SIGTERM handler returns; nothing else ends this)
                raise DbtCancelledException("dbt was cancelled: the task was killed while it watched its run")
            if time.monotonic() >= deadline:
                return None, offset
            time.sleep(POLL_SECONDS)
    except BaseException:  # killed, or the task's execution_timeout: nobody will resume this run
        ctl.abandon()
        raise


def exception_from_event(event: dict[str, Any], command: str, timeout: float | None) -> DbtException:
    """The same exception a synchronous run of the command would have raised."""
    status = event.get("status")
    error = event.get("error")
    if status == "timeout":
        base = exception_from_dict(error) if error else None
        return DbtTimeoutException(
            f"dbt {command} timed out after {timeout or 0:.0f}s and was cancelled",
            command=base.command if base else None, return_code=base.return_code if base else None,
            failed_nodes=base.failed_nodes if base else None,
            output_tail=base.output_tail if base else "", summary=base.summary if base else None)
    if error:
        return exception_from_dict(error)
    return DbtException(str(event.get("message") or f"dbt run ended with status {status!r}"))
