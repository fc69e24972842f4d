"""Airflow plugin: the published dbt docs sites, served by the API server behind Airflow's own login.

Registered through the ``airflow.plugins`` entry point, so installing the package is enough.

Authentication: every request needs an Airflow user (the UI's ``_token`` cookie or a bearer JWT). A
browser visit (HTML accepted, no Authorization header) without a valid token is redirected to the auth
manager's login page with a return URL; API clients get Airflow's 401/403.

Authorisation: the user must see the docs view, and per project may read its docs only if the
configured auth manager lets them read (``is_authorized_dag``, GET) at least one DAG that published it
(recorded by the publisher, see docs.py). Whatever auth manager is configured (FAB, Keycloak, simple,
your own) decides; the project list shows only permitted projects, and a project with no recorded
publisher is shown to nobody.

Serving: only the files of a docs site, matched by name against that list (never joined onto a dir),
and only as published (docs.DocsSite checks the index and hashes). See ``CSP`` for the page policy.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from dlh_airflow_common.docs import (
    DATA,
    GENERATOR_HINT,
    PAGES,
    URL_PREFIX,
    DocsError,
    DocsSite,
    plugin_enabled,
)

# dbt's docs page is one HTML file: inline scripts (AngularJS and a webpack bundle that compiles templates
# with Function(), hence 'unsafe-eval'), inline <style> tags, data: images and fonts, and an XHR for
# manifest.json / catalog.json next to it. Nothing else is allowed: no external scripts, styles, frames,
# forms, plugins or beacons (dbt's own telemetry is blocked), and only Airflow's UI may frame it.
# 'unsafe-inline' would still run a planted page's script as the Airflow origin: that is why DocsSite
# serves only hash-checked files the publisher wrote. No CSP ``sandbox``: without allow-same-origin the
# page's origin is opaque, so its XHR for the JSON carries no login cookie and dbt docs cannot load;
# with allow-same-origin and allow-scripts a sandbox no longer keeps scripts from Airflow's API.
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'unsafe-inline' 'unsafe-eval'",
    "style-src 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src data:",
    "connect-src 'self'",
    "frame-ancestors 'self'",
    "base-uri 'none'",
    "form-action 'none'",
))
_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}
_HEADERS = {"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP, "Referrer-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin"}
_USER = "dlh_docs_user"  # request.state attribute: set once the user is authenticated


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    title = html.escape(title)
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                        f"<body><h1>{title}</h1>{body}</body></html>", status, _HEADERS)


def _missing(exc: DocsError | OSError) -> HTMLResponse:
    """What is missing (or unreadable) and what generates it, instead of a stack trace."""
    return _page("dbt Docs unavailable", f"<p>{html.escape(str(exc))}</p>", 404)


def _forbidden(project: str) -> HTMLResponse:
    return _page("dbt Docs forbidden", f"<p>You may not read the dbt docs of project "
                 f"'{html.escape(project)}': they are shown to users who may read a DAG that publishes "
                 "them; ask an Airflow admin for read access to that DAG.</p>", 403)


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


def _authenticated(request: Request, user: GetUserDep) -> BaseUser:
    """Marks the request as authenticated, so a later 401/403 is an authorisation answer, not a login."""
    setattr(request.state, _USER, user)
    return user


def _dag(dag_id: str) -> DagDetails:
    """The DAG as the auth manager sees it, with its team for multi-team setups (Airflow versions that
    have teams)."""
    from airflow.models.dag import DagModel

    get_team_name = getattr(DagModel, "get_team_name", None)
    team = None if get_team_name is None else get_team_name(dag_id)
    return DagDetails(id=dag_id) if team is None else DagDetails(id=dag_id, team_name=team)


def _may_read(user: BaseUser, dag_ids: set[str]) -> bool:
    """Whether the auth manager lets ``user`` read at least one of the DAGs that publish a project."""
    manager = get_auth_manager()
    return any(manager.is_authorized_dag(method="GET", user=user, details=_dag(d)) for d in sorted(dag_ids))


def _wants_login(request: Request) -> bool:
    """A browser page visit (not an API client with its own credentials)."""
    return "authorization" not in request.headers and "text/html" in request.headers.get("accept", "")


async def _login_or_error(request: Request, exc: Exception) -> Response:
    """An unauthenticated browser goes to Airflow's login, returning here; everyone else gets the error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (401, 403) and not hasattr(request.state, _USER) and _wants_login(request):
        login = get_auth_manager().get_url_login()
        sep = "&" if "?" in login else "?"
        return RedirectResponse(f"{login}{sep}{urlencode({'next': str(request.url)})}", 307)
    return await http_exception_handler(request, exc)


def create_app(site: DocsSite | None = None) -> FastAPI:
    """The docs app; every route requires an Airflow user who may see the docs view, and each project's
    routes one who may read a DAG that publishes it."""
    docs = site or DocsSite()
    app = FastAPI(title="dbt Docs", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_authenticated), Depends(requires_access_view(AccessView.DOCS))])
    app.add_exception_handler(HTTPException, _login_or_error)

    def allowed(request: Request, project: str) -> bool:
        """Whether the user may read the project; DocsError if it has no recorded publisher."""
        publishers = docs.publishers(project)
        if not publishers:
            raise DocsError(f"the dbt docs of {project!r} record no publishing DAG, so nobody may read them; "
                            f"re-publish them with {GENERATOR_HINT} in a DAG")
        return _may_read(getattr(request.state, _USER), publishers)

    def readable(request: Request, project: str) -> bool:
        try:
            return allowed(request, project)
        except (DocsError, OSError):
            return False

    @app.get("/", response_model=None)
    def projects(request: Request) -> Response:
        try:
            names = docs.projects()
        except (DocsError, OSError) as exc:
            return _missing(DocsError(f"cannot list the dbt docs location {docs.location}: {exc}"))
        if not names:
            return _missing(DocsError(f"no dbt docs published yet under {docs.location}; they are generated "
                                      f"by {GENERATOR_HINT}"))
        names = [n for n in names if readable(request, n)]
        if not names:
            return _page("dbt Docs", "<p>There are dbt docs, but none of a DAG you may read; ask an Airflow "
                         "admin for read access to the DAG that publishes them.</p>", 403)
        if len(names) == 1:
            return RedirectResponse(f"{names[0]}/", 307, _HEADERS)
        items = "".join(f"<li><a href='{n}/'>{n}</a></li>" for n in names)  # names are identifiers
        return _page("dbt Docs", f"<ul>{items}</ul>")

    @app.get("/{project}", response_model=None)
    def project_root(project: str) -> Response:
        return RedirectResponse(f"{project}/", 307, _HEADERS) if project.isidentifier() else _missing(
            DocsError(f"{project!r} is not a dbt project name"))

    @app.get("/{project}/", response_model=None)
    def index(request: Request, project: str) -> Response:
        try:
            if not allowed(request, project):
                return _forbidden(project)
            page = _first_page(docs, project)
            problem = _check_data(project, docs.version(project), docs)
        except (DocsError, OSError) as exc:  # OSError: the storage itself (network, permissions)
            return _missing(exc)
        if problem:
            return _missing(DocsError(problem))
        return Response(page, 200, headers=_HEADERS, media_type=_TYPES[".html"])

    @app.get("/{project}/{name:path}", response_model=None)
    def site_file(request: Request, project: str, name: str) -> Response:
        try:
            if not allowed(request, project):
                return _forbidden(project)
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
