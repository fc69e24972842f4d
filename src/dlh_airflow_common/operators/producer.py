"""The streamed producer's use of the state store: which variant runs, and the sync variant's writes.

With ``state_store`` set, node results go to the store (``core.store_stream``) instead of the
runtime root, and node triggers read only the store. The producer runs detached (deferrable, its
worker freed, its own status mirrored to the store for its trigger) or, where nothing detached
survives a deferral (KubernetesExecutor), as a plain sync task that keeps its worker and writes the
same objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlh_airflow_common.core.events import redact
from dlh_airflow_common.core.exceptions import DbtException
from dlh_airflow_common.core.retention import Retention
from dlh_airflow_common.core.store import StateStore
from dlh_airflow_common.core.store_retention import maybe_prune_store
from dlh_airflow_common.core.store_stream import StoreStreamWriter, new_launch_name, stream_key
from dlh_airflow_common.core.stream import NodeIndex
from dlh_airflow_common.operators import settings
from dlh_airflow_common.state_store import StoreSetting, open_store

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dlh_airflow_common.hooks.dbt import DbtHook


def runs_sync(sync_producer: bool | None, store: StoreSetting | None) -> bool:
    """Whether a producer builds in its own task process: asked for, or the only way that works."""
    if sync_producer is not None:
        return sync_producer
    return store is not None and settings.ends_worker_on_defer()


def launch_in_store(store: StoreSetting, context: Context,
                    retention: Retention) -> tuple[StateStore, tuple[str, ...]]:
    """Open (and check) the store for this try of the producer, prune old launches there (at most every
    ``retention.every`` seconds); this launch's prefix."""
    ti = context["ti"]
    opened = open_store(store)
    maybe_prune_store(opened, retention)
    return opened, (*stream_key(str(ti.dag_id), str(ti.run_id)), new_launch_name())


class SyncProducer:
    """The sync variant: dbt's events go to a store writer as dbt finishes each node."""

    def __init__(self, writer: StoreStreamWriter) -> None:
        self.writer = writer
        self.cancelled = False

    @classmethod
    def start(cls, store: StoreSetting | None, context: Context, hook: DbtHook, retention: Retention,
              index: NodeIndex | None = None) -> SyncProducer:
        if store is None:
            raise DbtException(
                "A sync producer writes node results to the state store, and none is set: set "
                f"{settings.STATE_STORE_ENV} (or [dlh_dbt] state_store, or state_store=) to "
                "s3://bucket/prefix with its connection, or use sync_producer=False on a shared runtime root")
        opened, prefix = launch_in_store(store, context, retention)
        secrets = hook.resolve_profile().secrets

        def clean(text: str) -> str:
            return redact(text, secrets)

        writer = StoreStreamWriter(opened, prefix, clean, on_lost=lambda _why: hook.cancel())
        writer.start(index=index)
        hook.event_sink = writer
        return cls(writer)

    def cancel(self) -> None:
        """Marked before dbt stops: a node the cancel cuts short is not taken for a failed node."""
        self.cancelled = True
        try:
            self.writer.mark_now(cancel_requested=True)
        except Exception:  # the store is down: node tasks fail on the missing heartbeat instead
            return

    def end(self, state: str, log: Any) -> None:
        """The last results, then the final status; logs the run's request count."""
        try:
            self.writer.close(state="cancelled" if self.cancelled and state != "success" else state)
        except Exception as exc:
            log.warning("Could not write the producer's final status to the state store: %s", exc)
        log.info("State store requests by this producer: %s", self.writer.store.request_counts())
