"""Extra links on dbt tasks: the project's dbt Docs and the run's uploaded artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class DbtDocsLink(BaseOperatorLink):
    """Opens the dbt Docs site given as ``dbt_docs_url``."""

    name = "dbt Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "dbt_docs_url", None) or "")


class DbtArtifactsLink(BaseOperatorLink):
    """Opens this task try's folder of uploaded artifacts under ``artifacts_url``."""

    name = "dbt Artifacts"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        base = getattr(operator, "artifacts_url", None)
        if not base:
            return ""
        return f"{str(base).rstrip('/')}/{ti_key.dag_id}/{ti_key.task_id}/{ti_key.run_id}/"
