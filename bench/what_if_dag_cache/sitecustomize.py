"""Bench-only what-if, never shipped: Airflow's triggerer keeping one deserialized DAG per DAG version.

Airflow 3.3.2 deserializes the whole DAG twice for every start-from-trigger task (``_create_workload``
in the supervisor, ``create_runtime_ti`` in the runner), so N node triggers cost N x O(N).
``bench/per_node.py --what-if-dag-cache`` puts this dir on the triggerer's PYTHONPATH to measure what that
upstream change would give the streamed per-node DAG. The DAG still travels in every workload.
"""

from __future__ import annotations

import sys
from typing import Any


def _patch() -> None:
    from airflow.jobs import triggerer_job_runner as runner
    from airflow.models.serialized_dag import SerializedDagModel

    dags: dict[Any, Any] = {}
    original = SerializedDagModel.dag.fget
    assert original is not None

    def cached_dag(self: SerializedDagModel) -> Any:
        key = ("model", self.dag_hash, getattr(self, "load_op_links", True))
        if key not in dags:
            dags[key] = original(self)
        return dags[key]

    SerializedDagModel.dag = property(cached_dag)  # type: ignore[assignment,method-assign]
    from_dict = runner.DagSerialization.from_dict

    class _Cached:
        @staticmethod
        def from_dict(encoded: dict[str, Any]) -> Any:
            dag = encoded.get("dag", {})
            key = ("runner", dag.get("dag_id"), len(dag.get("tasks", ())))  # a bench DAG does not change
            if key not in dags:
                dags[key] = from_dict(encoded)
            return dags[key]

    runner.DagSerialization = _Cached  # type: ignore[assignment,misc]
    print("what-if: the triggerer caches deserialized DAGs (bench only)", file=sys.stderr, flush=True)


if "triggerer" in sys.argv:
    _patch()
