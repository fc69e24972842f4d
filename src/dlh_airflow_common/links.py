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

    Computed on the worker when the task finishes (Airflow 3 stores links in XCom); a node trigger
    sends it for a task ended in the triggerer. With the docs plugin disabled it opens the task's
    external ``dbt_docs_url`` instead.
    """

    name = "dbt Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        page = project_page(operator.task_id, getattr(operator, "dbt_project_dir", None),
                            getattr(operator, "dbt_docs_url", None))
        unique_id = getattr(operator, "dbt_unique_id", None)
        return node_page(page, unique_id) if unique_id else page


def project_page(task_id: str, project_dir: str | None, dbt_docs_url: str | None) -> str:
    """The link to the task's project in the docs ("" when there is none to open).

    Node triggers get it as an argument: a node task ended in the triggerer has no worker to compute
    its link, so its trigger sends :func:`node_page` with the end event.
    """
    if not docs.plugin_enabled():
        return str(dbt_docs_url or "")
    from dlh_airflow_common._compat import conf
    from dlh_airflow_common.operators import settings

    try:
        project = docs.project_name_of(settings.project_dir(task_id, project_dir))
    except Exception:
        project = None
    return docs.served_url(str(conf.get("api", "base_url", fallback="") or ""), project)


def node_page(page: str, unique_id: str) -> str:
    """A node's page in the docs whose project link is ``page`` (a fixed page, e.g. one with its own
    ``#`` route, stays as it is)."""
    overview = docs.page_fragment(None)
    if not page or ("#" in page and not page.endswith(overview)):
        return page
    return f"{page.removesuffix(overview).rstrip('/')}/{docs.page_fragment(unique_id)}"


class DbtArtifactsLink(BaseOperatorLink):
    """Opens this task try's folder of uploaded artifacts under ``artifacts_url``."""

    name = "dbt Artifacts"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        base = getattr(operator, "artifacts_url", None)
        if not base:
            return ""
        return f"{str(base).rstrip('/')}/{ti_key.dag_id}/{ti_key.task_id}/{ti_key.run_id}/"
