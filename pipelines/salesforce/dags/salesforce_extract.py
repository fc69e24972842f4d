"""Airflow DAG `salesforce_extract`: Salesforce Account, Contact, Opportunity into raw_salesforce.

Incremental on SystemModstamp (inclusive watermark, idempotent upsert on Id); one transaction per
object, so a failed task leaves that object's raw table and watermark as they were. Each task emits
an asset event for its raw table only when rows were inserted or changed (the `salesforce_dbt` DAG
is scheduled on them), with the records read, the rows changed and the new watermark as extras.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseHook, task
from salesforce_lib.assets import landed_alias, raw_assets
from salesforce_lib.config import SALESFORCE_CONN_ID, WAREHOUSE_CONN_ID, generator_state, source_kind
from salesforce_lib.objects import OBJECTS
from salesforce_lib.store import store_for_connection


def _source() -> Any:
    if source_kind() == "generator":
        from salesforce_lib.generator import FakeOrg

        org = FakeOrg(generator_state())
        if not any(org.data.values()):
            org.populate()
            org.save()
        return org
    from salesforce_lib.api import SalesforceApiSource, login_from_connection

    return SalesforceApiSource(login_from_connection(BaseHook.get_connection(SALESFORCE_CONN_ID)))


with DAG(
    "salesforce_extract",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["salesforce", "extract"],
) as dag:

    @task
    def create_raw_salesforce_schema() -> None:
        store_for_connection(BaseHook.get_connection(WAREHOUSE_CONN_ID)).ensure_schema()

    previous = create_raw_salesforce_schema()
    for obj in OBJECTS:  # one after another: DuckDB allows a single writer

        @task(task_id=f"extract_{obj.lower()}", outlets=[landed_alias(obj)])
        def extract(obj: str = obj, outlet_events: Any = None) -> dict[str, Any]:
            store = store_for_connection(BaseHook.get_connection(WAREHOUSE_CONN_ID))
            since = store.watermark(obj)
            read = store.land(obj, _source().fetch(obj, OBJECTS[obj], since))
            landed = {"object": obj, "since": since, "records_read": read, "rows_changed": store.last_changed,
                      "watermark": store.watermark(obj)}
            if store.last_changed:  # no new or changed row, no event: the dbt DAG is not woken for nothing
                outlet_events[landed_alias(obj)].add(raw_assets()[obj], extra=landed)
            return landed

        current = extract()
        previous >> current
        previous = current
