"""What starting one ``start_from_trigger`` task costs Airflow 3.3.2's triggerer, by DAG size.

Run by hand: ``.venv/bin/python bench/trigger_start_cost.py [N ...]`` (default 100 500 2000 5000).

For such a task the triggerer ships the whole serialized DAG with the trigger's workload and the trigger
runner deserializes it (``TriggerRunner.create_runtime_ti``: ``DagSerialization.from_dict``) once per
trigger, in its event loop, to build the task's RuntimeTaskInstance. A streamed per-node DAG of N nodes
starts N such triggers per run: the work is N x O(N). This times one deserialization of a DAG shaped like
a rendered streamed project (producer + N node tasks) and multiplies it out.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime


def measure(nodes: int, reps: int = 3) -> str:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from dlh_airflow_common.operators.dbt import DbtOperator

    common = {"dbt_project_dir": "/project", "conn_id": "warehouse"}
    with DAG(f"streamed_{nodes}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        producer = DbtOperator(task_id="dbt_producer", command="build", stream_nodes=True, **common)
        tasks = []
        for i in range(nodes):
            task = DbtOperator(task_id=f"model.m_{i:04d}", command="build", select=[f"m_{i:04d}"],
                               doc_md=f"model m_{i:04d}", dbt_unique_id=f"model.bench.m_{i:04d}",
                               stream_from="dbt_producer", trigger_rule="always", **common)
            (tasks[i // 2] if tasks else producer) >> task
            tasks.append(task)
    data = DagSerialization.to_dict(dag)
    started = time.perf_counter()
    for _ in range(reps):
        DagSerialization.from_dict(data).get_task("model.m_0000")
    each = (time.perf_counter() - started) / reps
    return (f"{nodes + 1:>5} tasks: serialized DAG {len(json.dumps(data)) / 1e6:5.2f} MB, deserialized per "
            f"trigger {each * 1000:6.0f} ms, x {nodes} triggers = {each * nodes:7.0f} s of triggerer CPU "
            "per run")


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [100, 500, 2000, 5000]:
        print(measure(n), flush=True)
