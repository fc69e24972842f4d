"""The raw_salesforce tables as Airflow assets: the extraction emits them, the dbt DAG is scheduled on them.

Each URI is the one the dbt project's own tasks use for that source table (``DbtProject.source_asset``),
so the extraction's events and dbt's lineage meet on the same assets in the UI.
"""

from __future__ import annotations

from functools import cache

from airflow.sdk import Asset, AssetAlias

from dlh_airflow_common.rendering import DbtProject
from salesforce_lib.config import DAGS_DIR, WAREHOUSE_CONN_ID
from salesforce_lib.objects import OBJECTS, table_for

SOURCE = "salesforce"  # the dbt source of the raw_salesforce tables (models/staging/sources.yml)


def project() -> DbtProject:
    return DbtProject(project_dir=str(DAGS_DIR / "dbt" / "salesforce"), conn_id=WAREHOUSE_CONN_ID)


@cache
def raw_assets() -> dict[str, Asset]:
    """Salesforce object name -> the asset of its raw table."""
    dbt = project()
    return {obj: dbt.source_asset(SOURCE, table_for(obj)) for obj in OBJECTS}


def landed_alias(obj: str) -> AssetAlias:
    """What an extraction task declares: it attaches its raw table's event only when rows arrived."""
    return AssetAlias(name=f"salesforce_raw/{table_for(obj)}")
