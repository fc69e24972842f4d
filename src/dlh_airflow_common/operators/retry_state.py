"""What a failed try leaves for the next one, so an Airflow retry re-runs only what failed.

A failed ``build``/``run``/``test``/``seed``/``snapshot`` keeps its run_results and manifest under
``<runtime root>/retry_state/<dag>/<task>/<run>/`` (each id through ``core.names.id_dir``, so an id
such as ``..`` stays one dir inside the root); the next try runs ``dbt retry --state`` there.
With a state store (``[dlh_dbt] state_store``), a failed try also puts its run_results and manifest
under ``retry_state/<dag>/<task>/<run>/`` there, and a try on a host without the local state fetches
them; without either, the try runs the full command again.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.detached import copy_artifacts
from dlh_airflow_common.core.names import id_dir
from dlh_airflow_common.core.safefs import check_inside, ensure_dir, open_state_file, remove_tree, secure_root
from dlh_airflow_common.state_store import StoreSetting, open_store

log = logging.getLogger(__name__)

# Commands whose failed nodes `dbt retry` can resume.
RESUMABLE = {"build", "run", "test", "seed", "snapshot"}
# What `dbt retry --state` reads.
RETRY_FILES = ("run_results.json", "manifest.json")


@dataclass(frozen=True)
class Plan:
    """The command a try runs: the task's own, or ``retry`` with the previous try's state."""

    command: str
    extra_args: list[str]
    resumed: bool


@dataclass(frozen=True)
class RetryState:
    """The state folder of one task in one DAG run."""

    path: Path
    root: Path
    store: StoreSetting | None = None  # also kept there, for a retry on another host
    key: tuple[str, ...] = ()
    try_number: int = 1

    @classmethod
    def for_task(cls, root: Path, ti: Any, store: StoreSetting | None = None) -> RetryState:
        ids = ("retry_state", id_dir(str(ti.dag_id)), id_dir(str(ti.task_id)), id_dir(str(ti.run_id)))
        path = root.joinpath(*ids)
        return cls(check_inside(root, path), root, store, ids, int(ti.try_number or 1))

    @staticmethod
    def resumable(command: str) -> bool:
        words = command.split()
        return bool(words) and words[0] in RESUMABLE

    def plan(self, command: str, extra_args: Sequence[str] | str, try_number: int, enabled: bool,
             task_log: logging.Logger | Any = log) -> Plan:
        """The command for this try; ``task_log`` tells the reader of the task log which one and why."""
        if enabled and try_number > 1 and self.resumable(command):
            if not (self.path / "run_results.json").is_file() and self.store is not None:
                self._fetch(task_log)
            if (self.path / "run_results.json").is_file():
                task_log.info("Try %s resumes the previous try's failure with `dbt retry`: only failed and "
                         "skipped nodes run (state in %s)", try_number, self.path)
                return Plan("retry", ["--state", str(self.path)], True)
            task_log.info("No state from a previous try on this host (%s); running the full command",
                          self.path)
        extra = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
        return Plan(command, extra, False)

    def save(self, artifacts: Path) -> None:
        """Keep a failed try's artifacts for the next try's ``dbt retry`` (here, and in the store)."""
        if not (artifacts / "run_results.json").is_file():
            return
        copy_artifacts(artifacts, ensure_dir(secure_root(self.root), self.path))
        if self.store is None:
            return
        try:
            store = open_store(self.store)
            for name in RETRY_FILES:
                if (artifacts / name).is_file():
                    store.put((artifacts / name).read_bytes(), *self.key, name)
        except Exception as exc:  # the next try then runs the full command: never fail the report
            log.warning("Could not keep the retry state in the state store: %s", exc)

    def _fetch(self, task_log: logging.Logger | Any) -> None:
        """The previous try's state from the store (it failed on another host), into this host's path."""
        try:
            store = open_store(self.store) if self.store is not None else None
            found = {name: store.get(*self.key, name) for name in RETRY_FILES} if store else {}
        except Exception as exc:
            task_log.warning("Could not read the retry state from the state store: %s", exc)
            return
        if not found.get("run_results.json"):
            return
        where = ensure_dir(secure_root(self.root), self.path)
        for name, data in found.items():
            if data is not None:
                fd = open_state_file(where / name, os.O_WRONLY)  # no link followed, 0600
                with os.fdopen(fd, "wb") as fh:
                    fh.truncate()
                    fh.write(data)
        task_log.info("Fetched the previous try's state from the state store (%s)", "/".join(self.key))

    def clear(self) -> None:
        remove_tree(self.root, self.path)
        if self.store is not None and self.try_number > 1:  # only a failed earlier try can have left some
            try:
                open_store(self.store).remove(*self.key)
            except Exception as exc:
                log.warning("Could not remove the retry state from the state store: %s", exc)
