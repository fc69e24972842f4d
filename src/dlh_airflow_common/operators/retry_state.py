"""What a failed try leaves for the next one, so an Airflow retry re-runs only what failed.

A failed ``build``/``run``/``test``/``seed``/``snapshot`` keeps its run_results and manifest under
``<runtime root>/retry_state/<dag>/<task>/<run>/`` (each id through ``core.names.id_dir``, so an id
such as ``..`` stays one dir inside the root); the next try runs ``dbt retry --state`` there.
A host without that state (another worker, no shared volume) runs the full command again.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.detached import copy_artifacts
from dlh_airflow_common.core.names import id_dir
from dlh_airflow_common.core.safefs import check_inside, ensure_dir, remove_tree, secure_root

log = logging.getLogger(__name__)

# Commands whose failed nodes `dbt retry` can resume.
RESUMABLE = {"build", "run", "test", "seed", "snapshot"}


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

    @classmethod
    def for_task(cls, root: Path, ti: Any) -> RetryState:
        ids = (id_dir(str(ti.dag_id)), id_dir(str(ti.task_id)), id_dir(str(ti.run_id)))
        path = root.joinpath("retry_state", *ids)
        return cls(check_inside(root, path), root)

    @staticmethod
    def resumable(command: str) -> bool:
        words = command.split()
        return bool(words) and words[0] in RESUMABLE

    def plan(self, command: str, extra_args: Sequence[str] | str, try_number: int, enabled: bool,
             task_log: logging.Logger | Any = log) -> Plan:
        """The command for this try; ``task_log`` tells the reader of the task log which one and why."""
        if enabled and try_number > 1 and self.resumable(command):
            if (self.path / "run_results.json").is_file():
                task_log.info("Try %s resumes the previous try's failure with `dbt retry`: only failed and "
                         "skipped nodes run (state in %s)", try_number, self.path)
                return Plan("retry", ["--state", str(self.path)], True)
            task_log.info("No state from a previous try on this host (%s); running the full command",
                          self.path)
        extra = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
        return Plan(command, extra, False)

    def save(self, artifacts: Path) -> None:
        """Keep a failed try's artifacts for the next try's ``dbt retry``."""
        if (artifacts / "run_results.json").is_file():
            copy_artifacts(artifacts, ensure_dir(secure_root(self.root), self.path))

    def clear(self) -> None:
        remove_tree(self.root, self.path)
