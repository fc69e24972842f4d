"""Extra links on dbt tasks: the project's dbt Docs and the run's uploaded artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

from dlh_airflow_common import docs

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class DbtDocsLink(BaseOperatorLink):
    """Opens the task's node (``dbt_unique_id``) or project in the docs the API server serves.

    Computed on the worker when the task finishes (Airflow 3 stores links in XCom). With the docs
    plugin disabled it opens the task's external ``dbt_docs_url`` instead.
    """

    name = "dbt Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        unique_id = getattr(operator, "dbt_unique_id", None)
        if not docs.plugin_enabled():
            external = str(getattr(operator, "dbt_docs_url", None) or "")
            if external and unique_id and "#" not in external:  # a hosted dbt docs site has the same routes
                return f"{external.rstrip('/')}/{docs.page_fragment(unique_id)}"
            return external
        from dlh_airflow_common._compat import conf
        from dlh_airflow_common.operators import settings

        try:
            project_dir = settings.project_dir(operator.task_id, getattr(operator, "dbt_project_dir", None))
        except Exception:
            project_dir = None
        project = docs.project_name_of(project_dir) if project_dir else None
        return docs.served_url(str(conf.get("api", "base_url", fallback="") or ""), project, unique_id)


class DbtArtifactsLink(BaseOperatorLink):
    """Opens this task try's folder of uploaded artifacts under ``artifacts_url``."""

    name = "dbt Artifacts"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        base = getattr(operator, "artifacts_url", None)
        if not base:
            return ""
        return f"{str(base).rstrip('/')}/{ti_key.dag_id}/{ti_key.task_id}/{ti_key.run_id}/"
