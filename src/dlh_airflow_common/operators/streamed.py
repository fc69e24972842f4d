"""The node-task side of the streamed per-node mode (the producer is a deferrable DbtOperator).

A node task is born deferred in the triggerer (Airflow >= 3.3: ``start_from_trigger``) with a
:class:`DbtNodeTrigger` that ends it there. Where that is not available (older Airflow, and
``dag.test()``, which runs every task through ``execute``), ``execute`` defers to the same trigger
once the producer has started, and the trigger resumes the task with the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlh_airflow_common import docs
from dlh_airflow_common._compat import (
    AIRFLOW_VERSION,
    AirflowRescheduleException,
    AirflowSkipException,
    airflow_at_least,
    redact,
)
from dlh_airflow_common.core.exceptions import DbtException, DbtRuntimeException
from dlh_airflow_common.core.store import StateStore
from dlh_airflow_common.core.store_stream import (
    StoreChannel,
    clear_failed_before_launch_in_store,
    mark_failed_before_launch_in_store,
    stream_key,
)
from dlh_airflow_common.core.stream import (
    StreamState,
    clear_failed_before_launch,
    current_launch,
    early_failure_message,
    failed_before_launch,
    mark_failed_before_launch,
    stream_dir,
)
from dlh_airflow_common.links import project_page
from dlh_airflow_common.operators import settings
from dlh_airflow_common.state_store import open_store

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dlh_airflow_common.operators.dbt import DbtOperator

TRIGGER = "dlh_airflow_common.triggers.node.DbtNodeTrigger"
START_FROM_TRIGGER_SINCE = "3.3"
# Producer task states in which it will not (or no longer) launch dbt for this run.
PRODUCER_DONE = {"success", "failed", "upstream_failed", "skipped", "removed"}
# A node task on a worker gives up on a producer that neither launched nor ended in this long.
START_TIMEOUT = timedelta(minutes=10)
_PAGES: dict[tuple[str | None, int | None, str | None, bool], str] = {}


def producer_dir(root: Path, context: Context) -> Path:
    ti = context["ti"]
    return stream_dir(root, ti.dag_id, ti.run_id)


def run_trigger_kwargs(op: DbtOperator, producer_task_id: str | None) -> dict[str, Any]:
    """The node trigger's arguments every node task of one rendered project shares (no node in them),
    from ``op``: a node task or, for the mapped layout, the producer."""
    store = settings.state_store(op.state_store, op.state_store_conn_id)
    return {"runtime_root": str(settings.runtime_root(op.runtime_root)), "producer_task_id": producer_task_id,
            "state_store": store.url if store else None,
            "state_store_conn_id": store.conn_id if store else None,
            "docs_page": _project_page(op.task_id, op.dbt_project_dir, op.dbt_docs_url) or None}


def _project_page(task_id: str, project_dir: str | None, docs_url: str | None) -> str:
    """``links.project_page``, read once per project file and docs setting (every node task asks)."""
    try:
        stamp = (Path(settings.project_dir(task_id, project_dir)) / "dbt_project.yml").stat().st_mtime_ns
    except (OSError, DbtException):
        stamp = None
    key = (project_dir, stamp, docs_url, docs.plugin_enabled())
    if key not in _PAGES:
        _PAGES[key] = project_page(task_id, project_dir, docs_url)
    return _PAGES[key]


def _trigger_kwargs(op: DbtOperator) -> dict[str, Any]:
    return {"unique_id": op.dbt_unique_id, "tests": op.node_tests, **run_trigger_kwargs(op, op.stream_from)}


def hint_naming_hook(op: DbtOperator) -> None:
    """A producer of a mapped node task says how to get node names into the UI when they are missing."""
    from dlh_airflow_common.naming import hook_installed

    if not hook_installed():
        op.log.info("The node instances of this run show as map indexes 0..%d in the UI. To show node names "
                    "instead, add this line to airflow_local_settings.py on the scheduler's host (a policy "
                    "from a plugin is not applied there): from dlh_airflow_common.naming import "
                    "task_instance_mutation_hook (if your own hook calls it, ignore this)",
                    len(op.node_index or []) - 1)


def only_producer_of_its_dag(op: DbtOperator) -> None:
    """A run's node results are kept per DAG run: a second producer in the DAG would mix its nodes in."""
    others = [t.task_id for t in op.dag.tasks if t is not op and getattr(t, "stream_nodes", False) is True]
    if others:
        raise ValueError(
            f"DAG {op.dag_id} already streams a dbt build (task {others[0]}), so {op.task_id} cannot: "
            "one streamed project (stream_nodes=True; shape='nodes', execution='streamed') per DAG, since "
            "a run's node results are kept per DAG run. Render the other project with "
            "execution='isolated' or in a DAG of its own.")


def born_in_triggerer(op: DbtOperator) -> None:
    """Make the scheduler start the task in the triggerer (Airflow >= 3.3), never on a worker."""
    if not op.dbt_unique_id:
        raise ValueError(f"{op.task_id}: stream_from needs dbt_unique_id (the node the task reflects)")
    if not airflow_at_least(START_FROM_TRIGGER_SINCE):
        return  # older Airflow: execute() defers to the same trigger (a short worker slot)
    from airflow.triggers.base import StartTriggerArgs

    op.start_trigger_args = StartTriggerArgs(trigger_cls=TRIGGER, trigger_kwargs={**_trigger_kwargs(op),
                                                                                  "end_task": True},
                                             next_method="execute_complete", next_kwargs=None, timeout=None)
    op.start_from_trigger = True


def watch_from_worker(op: DbtOperator, context: Context) -> None:
    """Defer to the node trigger once the producer has started; until then, come back shortly."""
    from dlh_airflow_common.triggers.node import DbtNodeTrigger

    ti = context["ti"]
    if not airflow_at_least(START_FROM_TRIGGER_SINCE):
        op.log.info("Airflow %d.%d cannot start tasks in the triggerer (needs %s): this node task "
                    "watches its producer from a worker slot, then defers",
                    *AIRFLOW_VERSION, START_FROM_TRIGGER_SINCE)
    stream = producer_dir(settings.runtime_root(op.runtime_root), context)
    started, early, where = _producer_started(op, context, stream)
    if not started:
        _fail_if_producer_ended(op, context, early, where)
        from airflow.sdk import timezone

        raise AirflowRescheduleException(timezone.utcnow() + timedelta(seconds=2))
    op.defer(trigger=DbtNodeTrigger(**_trigger_kwargs(op), end_task=False, dag_id=ti.dag_id,
                                    run_id=ti.run_id, try_number=int(ti.try_number or 1)),
             method_name="execute_complete")


def _producer_started(op: DbtOperator, context: Context,
                      stream: Path) -> tuple[bool, dict[str, Any] | None, str]:
    """Whether this DAG run's producer has written its first status (in the store, or on the root); if
    not, its early failure on a final try (or None); and where this task looked."""
    store = settings.state_store(op.state_store, op.state_store_conn_id)
    if store is not None:
        ti = context["ti"]
        state = StreamState()
        opened, run = open_store(store), stream_key(str(ti.dag_id), str(ti.run_id))
        StoreChannel(opened, run).poll(state)
        return state.seen, state.early_failure, f"state store {opened.path(*run)}"
    launch = current_launch(stream)
    if launch is not None and (launch / "status.json").is_file():
        return True, None, str(stream)
    marker = failed_before_launch(stream)
    return False, marker if marker is not None and marker.get("final") else None, str(stream)


def _fail_if_producer_ended(op: DbtOperator, context: Context, early: dict[str, Any] | None,
                            where: str) -> None:
    """Raise when the producer will never launch dbt for this run; a node task never waits forever."""
    producer = str(op.stream_from)
    if early is not None:
        raise DbtRuntimeException(early_failure_message(producer, early))
    state = producer_state(op, context, producer)
    if state in PRODUCER_DONE:
        fix = ("it wrote to another state store than this task reads: set the same state store for both"
               if where.startswith("state store") else
               "the runtime root is not shared between its worker and this one: mount one volume for both")
        raise DbtRuntimeException(
            f"The producer task {producer} ended {state} without a dbt run this task can see (no {where}); "
            f"see the log of task {producer}. If it succeeded, {fix}")
    first = _first_reschedule(context)
    if first is not None:
        from airflow.sdk import timezone

        if timezone.utcnow() - first > START_TIMEOUT:
            raise DbtRuntimeException(
                f"The producer task {producer} did not start dbt within {START_TIMEOUT} (state "
                f"{state or 'unknown'}, no {where}); check that task")


def _first_reschedule(context: Context) -> datetime | None:
    """When this try first rescheduled (the start of its wait), if Airflow can tell."""
    try:
        return context["ti"].get_first_reschedule_date(context)
    except Exception:  # an API hiccup: the next reschedule asks again
        return None


def producer_state(op: DbtOperator, context: Context, producer: str) -> str | None:
    """The producer task instance's state in this DAG run, as Airflow knows it (None if unknown)."""
    ti = context["ti"]
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[producer], run_ids=[ti.run_id])
    except Exception as exc:  # an API hiccup: the stream and the reschedule bound still decide
        op.log.warning("Could not read the state of task %s: %s", producer, exc)
        return None
    state = (states.get(ti.run_id) or {}).get(producer)
    return str(state) if state is not None else None


@contextmanager
def reporting_early_failure(op: DbtOperator, context: Context) -> Iterator[None]:
    """Around a producer's try: a failure before it launched dbt is written where its node tasks look."""
    stream = producer_dir(settings.runtime_root(op.runtime_root), context)
    clear_failed_before_launch(stream)
    in_store = _early_word_in_store(op, context)
    before, began = current_launch(stream), time.time()
    try:
        yield
    except Exception as exc:  # (a deferral is a BaseException: not caught)
        if current_launch(stream) == before and not _launched_in_store(in_store, began):
            _leave_word(op, context, stream, exc, in_store)
        raise


def _early_word_in_store(op: DbtOperator, context: Context) -> tuple[StateStore, tuple[str, ...]] | None:
    """With a state store, where node tasks look for an early failure; an earlier try's is removed."""
    store = settings.state_store(op.state_store, op.state_store_conn_id)
    if store is None:
        return None
    ti = context["ti"]
    try:
        opened, run = open_store(store), stream_key(str(ti.dag_id), str(ti.run_id))
        clear_failed_before_launch_in_store(opened, run)
    except Exception as exc:  # the task's own use of the store fails with the cause
        op.log.warning("Could not clear an earlier early failure in the state store: %s", exc)
        return None
    return opened, run


def _launched_in_store(in_store: tuple[StateStore, tuple[str, ...]] | None, began: float) -> bool:
    """Whether this try launched dbt with node results in the store (a launch status since ``began``)."""
    if in_store is None:
        return False
    state = StreamState()
    try:
        StoreChannel(*in_store).poll(state)
    except Exception:
        return False
    return float((state.status or {}).get("launched") or 0) >= began


def _leave_word(op: DbtOperator, context: Context, stream: Path, exc: Exception,
                in_store: tuple[StateStore, tuple[str, ...]] | None = None) -> None:
    """Write the producer's early failure for its node tasks; never raise in place of ``exc``."""
    try:
        final = int(context["ti"].try_number or 1) > int(op.retries or 0)
        message = redact(f"{type(exc).__name__}: {exc}")
        mark_failed_before_launch(settings.runtime_root(op.runtime_root), stream, message, final=final)
        if in_store is not None:
            mark_failed_before_launch_in_store(*in_store, message, final=final)
    except Exception as secondary:
        op.log.warning("Could not tell the node tasks why this task failed (%s: %s); they learn it "
                       "from its state", type(secondary).__name__, secondary)


def outcome(event: dict[str, Any]) -> bool:
    """Apply a node trigger's outcome on the worker; True when the task must build the node itself."""
    result = event.get("outcome")
    if result == "run_itself":
        return True
    if result == "skipped":
        raise AirflowSkipException(str(event.get("message")))
    if result == "failed":
        raise DbtRuntimeException(str(event.get("message")))
    return False
