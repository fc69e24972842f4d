"""One dbt command, done right: isolated runtime, secret-safe profile, streamed, classified, retried."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenacity

from dlh_airflow_common.core.artifacts import (
    RunSummary,
    load_run_results,
    load_sources,
    summarize,
)
from dlh_airflow_common.core.classify import Evidence, classify, is_transient
from dlh_airflow_common.core.duckdb_lock import default_wait, duckdb_file, duckdb_writer
from dlh_airflow_common.core.duckdb_path import anchor_duckdb_path
from dlh_airflow_common.core.events import EventCollector, redact
from dlh_airflow_common.core.exceptions import (
    DbtCancelledException,
    DbtConnectionException,
    DbtDuckDBLockedException,
    DbtEmptySelectionException,
    DbtProfileException,
    DbtTimeoutException,
)
from dlh_airflow_common.core.failure import (
    MAX_SQL_NODES,
    first_real_line,
    fresh_output,
    with_compiled_sql,
    without_compiled_paths,
)
from dlh_airflow_common.core.profile_setup import ProfileConfig, ResolvedProfile, plain_env, resolve_profile
from dlh_airflow_common.core.profiles import ProfilesDir
from dlh_airflow_common.core.runners import DbtCall, Runner, RunnerResult, SubprocessRunner
from dlh_airflow_common.core.runtime import DbtRuntime, RunIdentity, validate_project_dir
from dlh_airflow_common.core.safefs import open_state_file
from dlh_airflow_common.core.selection import empty_selection_message, has_selection, ran_nothing

log = logging.getLogger(__name__)


@dataclass
class DbtCommand:
    """A dbt command line; selection grammar is passed through to dbt untouched."""

    command: str
    select: Sequence[str] | str | None = None
    exclude: Sequence[str] | str | None = None
    selector: str | None = None
    vars: Mapping[str, Any] | str | None = None
    full_refresh: bool = False
    extra_args: Sequence[str] = ()
    allow_empty_selection: bool = False  # else a selection that runs no node fails (core.selection)

    @property
    def words(self) -> list[str]:
        return self.command.split()

    def vars_text(self) -> str | None:
        if self.vars is None or self.vars == {}:
            return None
        return self.vars if isinstance(self.vars, str) else json.dumps(self.vars, sort_keys=True)

    def argv(self) -> list[str]:
        args = self.words
        for flag, value in (("--select", self.select), ("--exclude", self.exclude)):
            items = [value] if isinstance(value, str) else list(value or [])
            items = [i for i in items if i]  # an empty templated selection means "everything"
            if items:
                args += [flag, *items]
        if self.selector:
            args += ["--selector", self.selector]
        text = self.vars_text()
        if text is not None:
            args += ["--vars", text]
        if self.full_refresh:
            args.append("--full-refresh")
        return [*args, *self.extra_args]


@dataclass
class DbtTaskResult:
    """What one dbt command produced; ``target_dir`` is None once the run's artifacts are removed."""

    success: bool
    return_code: int
    command: str
    summary: RunSummary
    run_results: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    target_dir: Path | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The compact form for XCom: no manifest, no full run_results."""
        return {
            "success": self.success,
            "return_code": self.return_code,
            "command": self.command,
            "summary": self.summary.to_dict(),
            "target_dir": str(self.target_dir) if self.target_dir else None,
            "attempts": self.attempts,
        }


ArtifactsCallback = Callable[[Path, "DbtTaskResult | None"], None]


class DbtInvoker:
    """Runs dbt commands for one project; one instance per task (it holds the cancellable run)."""

    def __init__(
        self,
        project_dir: str | os.PathLike[str],
        profile: ProfileConfig,
        *,
        runner: Runner | None = None,
        runtime_root: str | os.PathLike[str] | None = None,
        identity: RunIdentity | None = None,
        keep_target_artifacts: bool = False,
        target_path: str | os.PathLike[str] | None = None,
        retry_limit: int = 0,
        retry_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        env_vars: Mapping[str, str] | None = None,
        timeout: float | None = None,
        progress: Callable[[str], None] | None = None,
        partial_parse: bool = True,
        artifacts_callback: ArtifactsCallback | None = None,
        event_sink: Callable[[dict[str, Any]], None] | None = None,
        duckdb_lock_wait: float | None = None,
    ) -> None:
        self.project_dir = validate_project_dir(project_dir)
        self.event_sink = event_sink  # sees every dbt event (e.g. ``dbt ls`` output lines)
        self.profile = profile
        self.runner: Runner = runner or SubprocessRunner()
        self.runtime_root = runtime_root
        self.identity = identity or RunIdentity()
        self.keep_target_artifacts = keep_target_artifacts
        self.target_path = Path(target_path) if target_path else None
        self.retry_limit = max(0, int(retry_limit))
        self.retry_delay = float(retry_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.env_vars = dict(env_vars or {})
        self.timeout = timeout
        self.progress = progress
        self.partial_parse = partial_parse
        self.artifacts_callback = artifacts_callback
        self.runtime: DbtRuntime | None = None
        # How long a command waits for another task's dbt on the same DuckDB file.
        self.duckdb_lock_wait = default_wait() if duckdb_lock_wait is None else float(duckdb_lock_wait)
        if self.duckdb_lock_wait < 0:
            raise ValueError(f"duckdb_lock_wait={duckdb_lock_wait!r} must be seconds >= 0")
        self._cancelled = threading.Event()
        self._duckdb_file: Path | None = None
        profile.check()

    def _keeps_log_file(self) -> bool:
        """Whether dbt.log outlives the run (kept artifacts) or the user chose its level."""
        return (self.keep_target_artifacts or "DBT_LOG_LEVEL_FILE" in self.env_vars
                or "DBT_LOG_LEVEL_FILE" in os.environ)

    # -- public -------------------------------------------------------------------------------
    def invoke(self, command: DbtCommand) -> DbtTaskResult:
        """Run ``command``; raise a classified :class:`DbtException` unless it succeeded."""
        setup = resolve_profile(self.profile, self.project_dir, self.env_vars)
        setup = anchor_duckdb_path(setup, self.project_dir, command.words, self._dbt_env(setup))
        secrets = setup.secrets
        self._cancelled.clear()
        self._duckdb_file = self._duckdb_target(setup, command)
        is_deps = command.words[:1] == ["deps"]
        runtime = DbtRuntime.create(
            self.project_dir,
            runtime_root=self.runtime_root,
            identity=self.identity,
            keep_target_artifacts=self.keep_target_artifacts,
            for_deps=is_deps,
        )
        self.runtime = runtime
        target_dir = self.target_path or runtime.target_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        result: DbtTaskResult | None = None
        attempts = 0
        try:
            profiles_holder = ProfilesDir(setup.rendered, parent=runtime.run_dir) if setup.rendered else None
            try:
                env = {
                    **plain_env(self.env_vars),
                    **setup.secret_env,
                    "DBT_PROJECT_DIR": str(runtime.shadow_dir),
                    "DBT_PROFILES_DIR": str(profiles_holder.path if profiles_holder
                                            else setup.user_profiles_dir),
                    "DBT_TARGET_PATH": str(target_dir),
                    "DBT_LOG_PATH": str(runtime.log_dir),
                }
                if not self._keeps_log_file():
                    # dbt.log is removed with the run dir: writing its ~20 debug lines per node
                    # costs ~10% of a build. Our own event stream still reaches the task log.
                    env["DBT_LOG_LEVEL_FILE"] = "none"
                if setup.profile_name:
                    env["DBT_PROFILE"] = setup.profile_name
                if setup.target_name:
                    env["DBT_TARGET"] = setup.target_name
                if self.partial_parse:
                    runtime.seed_partial_parse(
                        self._parse_key(command, setup.profile_name, setup.target_name), target_dir)
                call = DbtCall(command.argv(), env, runtime.shadow_dir)
                shown = redact(self.runner.describe(call.args), secrets)

                retrying = tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(self.retry_limit + 1),
                    wait=tenacity.wait_exponential(multiplier=self.retry_delay, min=self.retry_delay,
                                                   max=self.retry_max_delay),
                    retry=tenacity.retry_if_exception(is_transient),
                    before_sleep=self._log_retry,
                    reraise=True,
                )
                for attempt in retrying:
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        with self._deps_lock(runtime, is_deps), self._duckdb_writer(runtime):
                            result = self._attempt(call, shown, command, target_dir, secrets, attempts)
                if is_deps:
                    runtime.publish_packages()
                if self.partial_parse:
                    runtime.publish_partial_parse()
            finally:
                if profiles_holder is not None:
                    profiles_holder.close()
            assert result is not None
            return result
        finally:
            if self.artifacts_callback is not None:
                try:
                    self.artifacts_callback(target_dir, result)
                except Exception as exc:  # an artifact consumer must never fail the dbt run
                    log.warning("Artifact handling failed: %s", exc)
            runtime.cleanup()
            if result is not None and not self.keep_target_artifacts and self.target_path is None:
                result.target_dir = None
            self.runtime = None

    def cancel(self) -> None:
        """Stop the running command (SIGINT, grace period, SIGKILL); the caller gets partial results."""
        self._cancelled.set()  # also ends a wait for a DuckDB file
        self.runner.cancel()

    # -- internals ----------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        """Lines for the person reading the task log: to the caller's sink, else this module's log."""
        (self.progress or log.info)(line)

    def _parse_key(self, command: DbtCommand, profile: str | None, target: str | None) -> str:
        """One cache entry per profile/target/vars/dbt, so different targets never evict each other.

        dbt itself still checks the saved parse (connection fields, project files) and re-parses
        whatever changed, so a key that is too coarse costs time, never correctness.
        """
        dbt = getattr(self.runner, "executable", None)  # another dbt (venv_path) parses differently
        basis = json.dumps([profile, target, command.vars_text(), self.profile.schema_override, dbt])
        return hashlib.sha256(basis.encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def _deps_lock(self, runtime: DbtRuntime, is_deps: bool) -> Iterator[None]:
        """Serialise ``dbt deps`` per project so two installs never interleave."""
        if not is_deps:
            yield
            return
        fd = open_state_file(runtime.cache.root / ".deps.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _duckdb_target(self, setup: ResolvedProfile, command: DbtCommand) -> Path | None:
        """The DuckDB file this command writes, from our profile or the user's profiles.yml."""
        try:
            output = setup.output(self.project_dir)
        except DbtProfileException as exc:  # dbt will say it again, in its own words
            self._say(f"No DuckDB file lock taken: {exc.message}")
            return None
        found = duckdb_file(output, command.words, self._dbt_env(setup), self._say, self.project_dir)
        if found is not None:
            self._say(f"DuckDB file: {found}")
        return found

    def _dbt_env(self, setup: ResolvedProfile) -> dict[str, str]:
        """What dbt's env_var() sees."""
        return {**os.environ, **self.env_vars, **setup.secret_env}

    def _duckdb_writer(self, runtime: DbtRuntime) -> contextlib.AbstractContextManager[None]:
        """Wait for, then hold, the DuckDB file this command writes (a no-op for other warehouses)."""
        return duckdb_writer(self._duckdb_file, run_name=runtime.run_dir.name,
                             runtime_root=runtime.root, wait=self.duckdb_lock_wait,
                             say=self._say, cancelled=self._cancelled)

    def _check_selection(self, command: DbtCommand, run_results: dict[str, Any], nothing_to_do: bool,
                         shown: str, summary: RunSummary) -> None:
        """A selection that ran no node fails the command unless the caller allowed it."""
        chosen = has_selection(command.select, command.exclude, command.selector)
        if chosen and not command.allow_empty_selection and ran_nothing(command.words, run_results,
                                                                        nothing_to_do):
            raise DbtEmptySelectionException(
                empty_selection_message(self.project_dir.name, command.select, command.exclude,
                                        command.selector), command=shown, return_code=0, summary=summary)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = (getattr(exc, "message", None) or str(exc)).splitlines()[0] if exc else "unknown"
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("Transient dbt failure (attempt %d of %d): %s; retrying in %.1fs",
                    state.attempt_number, self.retry_limit + 1, reason, wait)

    def _attempt(self, call: DbtCall, shown: str, command: DbtCommand, target_dir: Path,
                 secrets: list[str], attempt: int) -> DbtTaskResult:
        # A retried attempt must not report the previous attempt's results: drop what this command writes.
        is_freshness = command.words[:2] == ["source", "freshness"]
        with contextlib.suppress(FileNotFoundError):
            (target_dir / ("sources.json" if is_freshness else "run_results.json")).unlink()
        runtime = self.runtime
        collector = EventCollector(progress=self.progress, secrets=secrets,
                                   rewrite=runtime.user_paths if runtime is not None else None)
        self._say(f"Running {shown} (attempt {attempt})")
        sink = self.event_sink
        nothing_to_do: list[bool] = []

        def on_event(event: dict[str, Any]) -> None:
            collector.feed(event)
            if (event.get("info") or {}).get("name") == "NothingToDo":
                nothing_to_do.append(True)
            if sink is not None:
                sink(event)

        outcome: RunnerResult = self.runner.run(call, on_event, collector.feed_text, self.timeout)
        run_results = load_run_results(target_dir) if (target_dir / "run_results.json").exists() else {}
        sources = load_sources(target_dir) if (target_dir / "sources.json").exists() else {}
        summary = summarize(sources if is_freshness else run_results)
        for line in summary.lines():
            self._say(collector.clean(line))
        result = DbtTaskResult(
            success=outcome.return_code == 0 and not outcome.cancelled,
            return_code=outcome.return_code,
            command=shown,
            summary=summary,
            run_results=run_results,
            sources=sources,
            target_dir=target_dir,
            attempts=attempt,
        )
        if result.success:
            self._check_selection(command, run_results, bool(nothing_to_do), shown, summary)
            return result
        clean = collector.clean
        target_removed = not self.keep_target_artifacts and self.target_path is None
        failed = with_compiled_sql(summary.failures, run_results, clean, target_removed)
        for row in failed[:MAX_SQL_NODES]:
            self._say(f"{row['unique_id']} [{row['status']}]: {row['message']}")
        tail = fresh_output(collector.tail, [f["message"] for f in failed])
        if target_removed:
            tail = without_compiled_paths(tail)
        details: dict[str, Any] = {"command": shown, "return_code": outcome.return_code,
                                   "failed_nodes": failed, "output_tail": tail, "summary": summary,
                                   "attempts": attempt}
        if outcome.cancelled:
            done = summary.counts.get("success", 0) + summary.counts.get("pass", 0)
            cls = DbtTimeoutException if outcome.timed_out else DbtCancelledException
            why = f"timed out after {self.timeout:.0f}s" if outcome.timed_out else "was cancelled"
            raise cls(f"dbt {command.command} {why}; {done} of {summary.total} nodes had finished "
                      f"successfully", **details)
        messages = [m for m in (collector.exception_message, *collector.errors) if m] or [tail]
        exc_cls = classify(Evidence(
            exception_classes=collector.exception_classes,
            exception_message=collector.exception_message,
            failed_nodes=summary.failures,
            messages=messages,
        ))
        if exc_cls is DbtDuckDBLockedException:
            db = f" {self._duckdb_file}" if self._duckdb_file else ""
            headline = (f"dbt {command.command} failed ({exc_cls.__name__}): another process holds the "
                        f"DuckDB file{db} (one writer per file): {first_real_line(messages)}")
        elif failed:
            headline = f"dbt {command.command} failed ({exc_cls.__name__}): {len(failed)} failing node(s)"
        else:
            headline = (f"dbt {command.command} failed ({exc_cls.__name__}) before running any node: "
                        f"{first_real_line(messages)}")
        if issubclass(exc_cls, DbtConnectionException):
            conn = self.profile.connection
            raise exc_cls(headline, conn_id=conn.conn_id if conn else None, **details)
        raise exc_cls(headline, **details)
