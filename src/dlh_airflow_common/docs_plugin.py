"""Airflow plugin: the published dbt docs sites, served by the API server behind Airflow's own login.

Registered through the ``airflow.plugins`` entry point, so installing the package is enough. Every
request needs an Airflow user allowed to see the docs view (the UI's ``_token`` cookie or a bearer
JWT), checked by Airflow's auth manager. Only the files of a docs site are ever served: the path is
matched against that list, never joined onto a directory.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dlh_airflow_common.docs import (
    DATA,
    GENERATOR_HINT,
    PAGES,
    URL_PREFIX,
    DocsError,
    DocsSite,
    plugin_enabled,
)

_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    title = html.escape(title)
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                        f"<body><h1>{title}</h1>{body}</body></html>", status, _HEADERS)


def _missing(exc: DocsError | OSError) -> HTMLResponse:
    """What is missing (or unreadable) and what generates it, instead of a stack trace."""
    return _page("dbt Docs unavailable", f"<p>{html.escape(str(exc))}</p>", 404)


@lru_cache(maxsize=64)
def _check_data(project: str, version: str, site: DocsSite) -> str | None:
    """Why the site's JSON cannot be shown, or None; cached per version (versions never change)."""
    for name in DATA:
        try:
            json.loads(site.read(project, name))
        except DocsError as exc:
            return str(exc)
        except ValueError as exc:
            return f"the {name} of dbt project {project!r} is corrupt ({exc}); re-run {GENERATOR_HINT}"
    return None


def create_app(site: DocsSite | None = None) -> FastAPI:
    """The docs app; every route requires an Airflow user who may see the docs view."""
    docs = site or DocsSite()
    app = FastAPI(title="dbt Docs", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_access_view(AccessView.DOCS))])

    @app.get("/", response_model=None)
    def projects() -> Response:
        try:
            names = docs.projects()
        except OSError as exc:
            return _missing(DocsError(f"cannot list the dbt docs location {docs.location}: {exc}"))
        if not names:
            return _missing(DocsError(f"no dbt docs published yet under {docs.location}; they are generated "
                                      f"by {GENERATOR_HINT}"))
        if len(names) == 1:
            return RedirectResponse(f"{names[0]}/", 307)
        items = "".join(f"<li><a href='{n}/'>{n}</a></li>" for n in names)  # names are identifiers
        return _page("dbt Docs", f"<ul>{items}</ul>")

    @app.get("/{project}", response_model=None)
    def project_root(project: str) -> Response:
        return RedirectResponse(f"{project}/", 307) if project.isidentifier() else _missing(
            DocsError(f"{project!r} is not a dbt project name"))

    @app.get("/{project}/", response_model=None)
    def index(project: str) -> Response:
        try:
            page = _first_page(docs, project)
            problem = _check_data(project, docs.version(project), docs)
        except (DocsError, OSError) as exc:  # OSError: the storage itself (network, permissions)
            return _missing(exc)
        if problem:
            return _missing(DocsError(problem))
        return Response(page, 200, headers=_HEADERS, media_type=_TYPES[".html"])

    @app.get("/{project}/{name:path}", response_model=None)
    def site_file(project: str, name: str) -> Response:
        try:
            data = docs.read(project, name)
        except (DocsError, OSError) as exc:  # OSError: the storage itself (network, permissions)
            return _missing(exc)
        return Response(data, 200, headers=_HEADERS, media_type=_TYPES["." + name.rsplit(".", 1)[-1]])

    return app


def _first_page(docs: DocsSite, project: str) -> bytes:
    """``index.html`` (it fetches the JSON next to it), else dbt's single-file ``static_index.html``."""
    try:
        return docs.read(project, PAGES[0])
    except DocsError as first:
        try:
            return docs.read(project, PAGES[1])
        except DocsError:
            raise first from None


def _apps() -> list[dict[str, Any]]:
    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "dbt Docs"}] if plugin_enabled() else []


def _views() -> list[dict[str, Any]]:
    view = {"name": "dbt Docs", "href": URL_PREFIX.lstrip("/") + "/", "destination": "nav",
            "url_route": "dbt-docs"}
    return [view] if plugin_enabled() else []


class DbtDocsPlugin(AirflowPlugin):
    """dbt Docs in the Airflow UI: the FastAPI app above plus a navigation entry that embeds it."""

    name = "dlh_dbt_docs"
    fastapi_apps = _apps()
    external_views = _views()
