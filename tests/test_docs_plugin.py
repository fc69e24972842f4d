"""dbt Docs inside Airflow: a real `airflow dags test` generates and publishes the demo project's docs,
a real `airflow api-server` (login required) serves them, checked over HTTP and in headless Chromium.
One api-server per module; its AIRFLOW_HOME and SQLite metadata DB live in tmp. Its auth manager is
SimpleAuthManager plus per-DAG grants (tests/docs_auth.py): the viewer may read the dbt_docs DAG only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import stat
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common import docs, docs_plugin
from tests.conftest import EXAMPLES, REPO
from tests.pgserver import free_port
from tests.test_scheduler_smoke import AirflowStack

DOCS_DAGS = REPO / "tests" / "docs_dags"
ARTIFACTS = REPO / "tests" / "artifacts"  # gitignored: the browser screenshot is kept here
CANARY = "docs-canary-7f3a9e"
USER, PASSWORD = "docs_admin", "Docs-Pw-" + secrets.token_hex(6)
VIEWER, VIEWER_PASSWORD = "docs_viewer", "Docs-Pw-" + secrets.token_hex(6)  # may read DAG dbt_docs only
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what a browser asks for a page


@dataclass
class Served:
    stack: AirflowStack
    base: str
    token: str
    location: Path
    run_id: str
    viewer_token: str = ""

    def get(self, path: str, token: str | None = None, cookie: bool = False,
            accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """A raw GET (http.client sends the path exactly as given: no normalization of ``..``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.stack.api_port, timeout=30)
        headers = {"Accept": accept} if accept else {}
        if token and cookie:
            headers["Cookie"] = f"_token={token}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path, self.token)
        assert status == 200, f"GET {path}: {status} {body[:500]!r}"
        return json.loads(body)


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> str:
    return f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("docs")
    home, runtime = tmp / "airflow", tmp / "dbt-runtime"
    home.mkdir()
    runtime.mkdir()
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, tmp / name)
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD, VIEWER: VIEWER_PASSWORD}))
    # Files next to the docs location that a traversal would reach.
    (runtime / "secret.txt").write_text(CANARY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DLH_", "DBT_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DOCS_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.docs_auth.PerDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin,{VIEWER}:viewer",
        "DLH_TEST_DAG_GRANTS": f"{VIEWER}:dbt_docs",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "DLH_DBT_RUNTIME_ROOT": str(runtime),  # docs are published to its docs/ by default
        "DLH_DOCS_PROJECT_DIR": str(tmp / "demo_project"),
        "AIRFLOW_CONN_DOCS_DUCK": json.dumps({"conn_type": "duckdb", "host": str(tmp / "docs.duckdb")}),
    })
    stack = AirflowStack(home, env, port)
    try:
        migrate = stack.cli("db", "migrate", timeout=300)
        assert migrate.returncode == 0, _fail("airflow db migrate", migrate)
        # The api-server starts while the DAG runs: they share nothing but the files.
        stack.start("api-server", "--apps", "core", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        run = stack.cli("dags", "test", "dbt_docs", timeout=400)
        assert run.returncode == 0 and "state=success" in run.stdout + run.stderr, _fail("airflow dags test", run)
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert not stack.dead() and time.monotonic() < deadline, f"api-server not up\n{stack.report()}"
            time.sleep(0.5)
        s = Served(stack, f"http://127.0.0.1:{port}", _login(port, USER, PASSWORD), runtime / "docs", "",
                   _login(port, VIEWER, VIEWER_PASSWORD))
        s.run_id = s.json("/api/v2/dags/dbt_docs/dagRuns")["dag_runs"][0]["dag_run_id"]
        yield s
    finally:
        survivors = stack.stop()
        assert not survivors, f"processes survived: {survivors}"


def _login(port: int, user: str, password: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/token", method="POST",
                                 data=json.dumps({"username": user, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["access_token"])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_nav_entry_and_app_are_registered(served: Served) -> None:
    plugins = served.json("/api/v2/plugins")["plugins"]
    ours = [p for p in plugins if p["name"] == "dlh_dbt_docs"]
    assert ours, f"plugin not loaded: {[p['name'] for p in plugins]}"
    assert [a["url_prefix"] for a in ours[0]["fastapi_apps"]] == ["/dbt-docs"]
    views = ours[0]["external_views"]
    assert [(v["name"], v["href"], v["destination"], v["url_route"]) for v in views] == [
        ("dbt Docs", "dbt-docs/", "nav", "dbt-docs")]
    assert not served.json("/api/v2/importErrors")["import_errors"]


def test_docs_site_and_its_json_are_served(served: Served) -> None:
    status, headers, _ = served.get("/dbt-docs/", served.token)
    assert status == 307 and headers["location"] == "demo/", (status, headers)
    status, headers, page = served.get("/dbt-docs/demo/", served.token)
    assert status == 200 and headers["content-type"].startswith("text/html"), (status, page[:300])
    assert b"dbt" in page and b"manifest.json" in page  # dbt's page, which fetches the JSON next to it
    manifest = served.json("/dbt-docs/demo/manifest.json")
    assert manifest["metadata"]["project_name"] == "demo"
    assert "model.demo.customer_orders" in manifest["nodes"]
    catalog = served.json("/dbt-docs/demo/catalog.json")
    assert "model.demo.customer_orders" in catalog["nodes"]  # the catalog saw the built table
    # Published atomically: `current` is a symlink to one complete version.
    current = served.location / "demo" / "current"
    assert current.is_symlink() and {"index.html", "manifest.json", "catalog.json"} <= {
        p.name for p in current.iterdir()}
    # ...listed with their hashes, by the DAG that published them.
    index = json.loads((current / docs.INDEX).read_text())
    assert index["dag_id"] == "dbt_docs" and set(index["files"]) >= {"index.html", "manifest.json"}
    assert json.loads((served.location / "demo" / docs.PUBLISHERS).read_text()) == ["dbt_docs"]


def test_responses_carry_csp_nosniff_and_their_content_type(served: Served) -> None:
    for path, kind in (("/dbt-docs/demo/", "text/html; charset=utf-8"),
                       ("/dbt-docs/demo/manifest.json", "application/json"),
                       ("/dbt-docs/demo/catalog.json", "application/json"),
                       ("/dbt-docs/nosuch/", "text/html; charset=utf-8")):  # error pages too
        status, headers, _ = served.get(path, served.token)
        assert status in (200, 404) and headers["content-type"] == kind, (path, status, headers)
        assert headers["x-content-type-options"] == "nosniff", (path, headers)
        csp = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
        assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'", csp
        assert csp["frame-ancestors"] == "'self'" and csp["base-uri"] == "'none'", csp
        assert "https:" not in headers["content-security-policy"] and "*" not in csp["script-src"], csp


def test_the_store_is_private_to_the_airflow_user(served: Served) -> None:
    """Everything the publisher made: dirs 0700, files 0600, owned by this uid (the `current` link aside)."""
    entries = [served.location, *served.location.rglob("*")]
    assert len(entries) > 8
    for path in entries:
        st = path.lstat()
        assert st.st_uid == os.geteuid(), path
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o700, (path, oct(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o600, (path, oct(st.st_mode))
        else:
            assert path.name == "current" and stat.S_ISLNK(st.st_mode), path


def test_anonymous_and_forged_requests_are_refused(served: Served) -> None:
    for path in ("/dbt-docs/", "/dbt-docs/demo/", "/dbt-docs/demo/manifest.json", "/dbt-docs/demo/catalog.json"):
        status, _, body = served.get(path)
        assert status == 401 and b"customer_orders" not in body, (path, status, body[:200])
        status, _, body = served.get(path, "not-a-jwt")
        assert status in (401, 403) and b"customer_orders" not in body, (path, status, body[:200])
    # The browser's way in: the UI's `_token` cookie.
    assert served.get("/dbt-docs/demo/manifest.json", served.token, cookie=True)[0] == 200


@pytest.mark.parametrize("path", [
    "/dbt-docs/demo/../../secret.txt",
    "/dbt-docs/demo/..%2F..%2Fsecret.txt",
    "/dbt-docs/demo/%2e%2e/%2e%2e/secret.txt",
    "/dbt-docs/..%2F..%2Fsecret.txt",
    "/dbt-docs/%2e%2e/secret.txt/",
    "/dbt-docs/demo/versions/../../../secret.txt",
    "/dbt-docs/demo/%252e%252e%252fsecret.txt",
    "/dbt-docs/demo/..\\..\\secret.txt",
    "/dbt-docs/demo/current/manifest.json",
    "/dbt-docs/demo/.lock",
])
def test_path_traversal_never_leaves_the_docs(served: Served, path: str) -> None:
    status, _, body = served.get(path, served.token)
    assert status in (400, 404) and CANARY.encode() not in body, (status, body[:300])


def test_missing_and_corrupt_generations_explain_themselves(served: Served) -> None:
    status, _, body = served.get("/dbt-docs/nosuch/", served.token)
    assert status == 404 and b"no dbt docs published for project &#x27;nosuch&#x27;" in body, body
    assert b"docs generate" in body and b"Traceback" not in body
    try:
        _damaged_sites(served)
    finally:
        for project in ("broken", "partial"):
            shutil.rmtree(served.location / project, ignore_errors=True)


def _copy_of_demo(served: Served, project: str) -> Path:
    """A copy of the demo's published site (index and publishers included) as another project."""
    version = served.location / project / "versions" / "20260101T000000000000Z-0123abcd"
    shutil.copytree((served.location / "demo" / "current").resolve(), version)
    shutil.copy2(served.location / "demo" / docs.PUBLISHERS, served.location / project / docs.PUBLISHERS)
    (served.location / project / "current").symlink_to(Path("versions") / version.name)
    return version


def _damaged_sites(served: Served) -> None:
    # A site whose catalog got corrupted after publishing, and one whose manifest vanished.
    for project, damage in (("broken", "catalog.json"), ("partial", "manifest.json")):
        version = _copy_of_demo(served, project)
        if project == "broken":
            (version / damage).write_text('{"nodes": ')
        else:
            (version / damage).unlink()
    status, _, body = served.get("/dbt-docs/broken/", served.token)
    assert status == 404 and b"catalog.json of the dbt docs of &#x27;broken&#x27;" in body, body
    assert b"was changed after it was published, so it is not served" in body, body
    assert b"command=&#x27;docs generate&#x27; (it publishes on success)" in body
    status, _, body = served.get("/dbt-docs/partial/", served.token)
    assert status == 404 and b"have no manifest.json" in body and b"docs generate" in body, body
    # With several projects the root lists them instead of redirecting.
    status, _, body = served.get("/dbt-docs/", served.token)
    assert status == 200 and b"href='demo/'" in body and b"href='broken/'" in body


def test_dbt_docs_links_land_on_the_node_and_the_project(served: Served) -> None:
    def link(task_id: str) -> str:
        links = served.json(f"/api/v2/dags/dbt_docs/dagRuns/{served.run_id}/taskInstances/{task_id}/links")
        return str(links["extra_links"]["dbt Docs"])

    assert link("model.customer_orders") == f"{served.base}/dbt-docs/demo/#!/model/model.demo.customer_orders"
    assert link("dbt_build") == f"{served.base}/dbt-docs/demo/#!/overview"
    # ...and they open: the page the link points at is served.
    assert served.get("/dbt-docs/demo/", served.token)[0] == 200


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is needed for the browser test: install the Debian package "
                    "`chromium` (apt-get install chromium; .ci/run does it)")
    return found


class _LoggedInProxy(BaseHTTPRequestHandler):
    """What a logged-in browser sends: the UI's ``_token`` cookie on every request to the API server."""

    target: tuple[int, str] = (0, "")

    def do_GET(self) -> None:
        port, token = self.target
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", self.path, headers={"Cookie": f"_token={token}"})
        resp = conn.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        conn.close()

    def log_message(self, *args: Any) -> None:
        pass


def test_browser_renders_the_docs(served: Served, tmp_path: Path) -> None:
    chromium = _chromium()
    _LoggedInProxy.target = (served.stack.api_port, served.token)
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _LoggedInProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dbt-docs.png"
    shot.unlink(missing_ok=True)
    url = f"http://127.0.0.1:{proxy.server_address[1]}/dbt-docs/demo/#!/model/model.demo.customer_orders"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=15000", "--window-size=1400,900"]

    def browse(*args: str) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
        profile.mkdir()
        return subprocess.run([chromium, *flags, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=120)

    try:
        # The proxy passes the docs app's headers on: the page below renders under its CSP.
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.headers["Content-Security-Policy"] == docs_plugin.CSP
        dom = browse("--dump-dom")
        assert dom.returncode == 0, _fail("chromium --dump-dom", dom)
        # Only the manifest (fetched by the page through the API server) holds these names, and only
        # the catalog the warehouse types of the model's columns.
        assert "stg_customers" in dom.stdout and "customer_orders" in dom.stdout, dom.stdout[-3000:]
        assert "lifetime_value" in dom.stdout and "DOUBLE" in dom.stdout, dom.stdout[-3000:]
        assert "dbt Docs unavailable" not in dom.stdout
        pic = browse(f"--screenshot={shot}")
        assert pic.returncode == 0 and shot.stat().st_size > 10_000, _fail("chromium --screenshot", pic)
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("remote", [False, True], ids=["local-dir", "object-storage"])
def test_publishing_is_atomic_and_newest_wins(tmp_path: Path, remote: bool) -> None:
    """Local: version dirs and a symlink; object storage (fsspec's memory:// through ObjectStoragePath,
    as s3:// or gs:// would be): version prefixes and a CURRENT pointer."""
    def generation(stamp: str, marker: str) -> Path:
        src = tmp_path / marker
        src.mkdir()
        (src / "manifest.json").write_text(json.dumps({"metadata": {"project_name": "demo",
                                                                    "generated_at": stamp}, "m": marker}))
        (src / "catalog.json").write_text("{}")
        (src / "index.html").write_text(marker)
        return src

    where = f"memory://docs-{secrets.token_hex(4)}/site" if remote else str(tmp_path / "site")
    docs.publish_docs(generation("2026-03-01T10:00:00.000002Z", "newer"), where)
    docs.publish_docs(generation("2026-03-01T10:00:00.000001Z", "older"), where)  # a slow, older task
    site = docs.DocsSite(where)
    assert site.read("demo", "index.html") == b"newer"
    assert json.loads(site.read("demo", "manifest.json"))["m"] == "newer"
    # A reader polling while generations are published only ever sees whole sites. (Two generations:
    # a reader that resolved the pointer keeps its version while fewer than KEEP_VERSIONS replace it.)
    seen: list[bytes] = []
    errors: list[Exception] = []
    started, done = threading.Event(), threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(site.read("demo", "index.html"))
            except Exception as exc:
                errors.append(exc)
            started.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert started.wait(30)
        for i in range(docs.KEEP_VERSIONS - 1):
            docs.publish_docs(generation(f"2026-03-02T10:00:0{i}Z", f"g{i}"), where)
    finally:
        done.set()
        reader.join()
    assert not errors and set(seen) <= {b"newer", b"g0", b"g1"}, errors
    for i in range(docs.KEEP_VERSIONS - 1, 8):
        docs.publish_docs(generation(f"2026-03-02T10:00:0{i}Z", f"g{i}"), where)
    assert site.read("demo", "index.html") == b"g7" and site.projects() == ["demo"]
    if not remote:
        versions = list((tmp_path / "site" / "demo" / "versions").iterdir())
        assert len(versions) == docs.KEEP_VERSIONS and not [v for v in versions if v.name.startswith(".")]
    # A generation that is not a docs generation is refused with what it lacks.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    with pytest.raises(docs.DocsError, match=r"no catalog\.json, index\.html or static_index\.html"):
        docs.publish_docs(bad, where)
    with pytest.raises(docs.DocsError, match="is not part of a dbt docs site"):
        site.read("demo", "../secret.txt")


def test_links_fall_back_to_the_external_docs_when_the_plugin_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.links import DbtDocsLink
    from dlh_airflow_common.operators.dbt import DbtOperator

    node = DbtOperator(task_id="n", command="build", select=["fqn:demo.customer_orders"],
                       dbt_unique_id="model.demo.customer_orders", dbt_docs_url="https://docs.example.com/")
    whole = DbtOperator(task_id="w", command="build", dbt_docs_url="https://docs.example.com/")
    monkeypatch.setenv(docs.PLUGIN_ENV, "false")
    assert DbtDocsLink().get_link(node, ti_key=None) == (  # type: ignore[arg-type]
        "https://docs.example.com/#!/model/model.demo.customer_orders")
    assert DbtDocsLink().get_link(whole, ti_key=None) == "https://docs.example.com/"  # type: ignore[arg-type]
    assert DbtOperator(task_id="d", command="docs generate").publish_docs
    assert not DbtOperator(task_id="d2", command="docs generate", publish_docs=False).publish_docs
    assert not whole.publish_docs


@contextlib.contextmanager
def _restored(path: Path) -> Iterator[bytes]:
    """Put a published file back exactly (bytes and mode) after a test tampered with it."""
    data, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    try:
        yield data
    finally:
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        path.chmod(mode)


def test_a_symlink_to_a_secret_is_not_served(served: Served) -> None:
    """A manifest.json replaced by a symlink to a file outside the store: the link works as a plain read,
    but the docs app does not follow it."""
    manifest = served.location / "demo" / "current" / "manifest.json"
    secret = served.location.parent / "secret.txt"
    with _restored(manifest):
        manifest.unlink()
        manifest.symlink_to(secret)
        assert manifest.read_text() == CANARY  # the attack is real: a naive reader gets the secret
        status, headers, body = served.get("/dbt-docs/demo/manifest.json", served.token)
        assert status == 404 and CANARY.encode() not in body, (status, body[:300])
        assert b"is a symlink, which the docs store never publishes" in body, body
        assert headers["content-type"].startswith("text/html")
    assert served.get("/dbt-docs/demo/manifest.json", served.token)[0] == 200  # restored: served again


PLANTED = b"<!doctype html><html><body><script>fetch('/api/v2/variables')</script>planted-page</body></html>"


@pytest.mark.parametrize("how", ["replaced-after-publishing", "never-published"])
def test_a_planted_page_with_a_script_is_not_served(served: Served, how: str) -> None:
    """A page the publisher did not write (an index.html swapped after publishing, or a static_index.html
    added next to it) would run its script as the Airflow origin: it is refused, not served."""
    version = (served.location / "demo" / "current").resolve()
    name, path = ("index.html", "/dbt-docs/demo/") if how == "replaced-after-publishing" else (
        "static_index.html", "/dbt-docs/demo/static_index.html")
    target = version / name
    assert target.exists() == (how == "replaced-after-publishing")
    try:
        with contextlib.ExitStack() as stack:
            if target.exists():
                stack.enter_context(_restored(target))
            target.write_bytes(PLANTED)
            target.chmod(0o600)
            assert target.read_bytes() == PLANTED
            status, _, body = served.get(path, served.token)
            assert status == 404 and b"planted-page" not in body and b"<script>" not in body, (status, body)
            why = b"was changed after it was published" if target.name == "index.html" else b"was not written"
            assert why in body, body
    finally:
        if how == "never-published":
            target.unlink(missing_ok=True)
    status, _, body = served.get("/dbt-docs/demo/", served.token)
    assert status == 200 and b"planted-page" not in body


def test_a_store_dir_of_another_user_or_writable_by_others_is_refused(served: Served, tmp_path: Path) -> None:
    project = served.location / "demo"
    try:
        project.chmod(0o770)
        status, _, body = served.get("/dbt-docs/demo/", served.token)
        assert status == 404 and b"is writable by group or others (mode 770)" in body, (status, body[:400])
        assert b"chmod -R go-w" in body
    finally:
        project.chmod(0o700)
    assert served.get("/dbt-docs/demo/", served.token)[0] == 200
    # The publisher refuses the same: a store dir owned by another uid, or group-writable.
    artifacts = _demo_artifacts(served, tmp_path, "demo")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 12345, 12345)
    with pytest.raises(docs.DocsError, match=r"owned by uid 12345, not by this process .*chown -R"):
        docs.publish_docs(artifacts, str(foreign), dag_id="dbt_docs")
    assert not list(foreign.iterdir())
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(docs.DocsError, match=r"writable by group or others \(mode 775\).*chmod"):
        docs.publish_docs(artifacts, str(shared), dag_id="dbt_docs")
    assert not list(shared.iterdir())


def test_the_lock_and_old_versions_are_never_reached_through_a_symlink(served: Served, tmp_path: Path) -> None:
    """A ``.lock`` planted as a symlink is not opened (the old `open("a")` created its target), and a link
    among the versions is unlinked when pruned, never followed into what it points at."""
    store = tmp_path / "store"
    artifacts = _demo_artifacts(served, tmp_path, "demo")
    docs.publish_docs(artifacts, str(store), dag_id="dbt_docs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    lock = store / "demo" / ".lock"
    lock.unlink()
    lock.symlink_to(outside / "created-through-the-link")
    with pytest.raises(docs.DocsError, match=r"\.lock is a symlink"):
        docs.publish_docs(artifacts, str(store), dag_id="dbt_docs")
    assert not (outside / "created-through-the-link").exists()
    lock.unlink()
    (store / "demo" / "versions" / "19990101T000000Z-00000000").symlink_to(outside)
    for _ in range(docs.KEEP_VERSIONS + 1):
        docs.publish_docs(artifacts, str(store), dag_id="dbt_docs")
    assert (outside / "keep.txt").read_text() == "keep"
    assert not (store / "demo" / "versions" / "19990101T000000Z-00000000").is_symlink()  # pruned: unlinked


def _demo_artifacts(served: Served, tmp_path: Path, project: str) -> Path:
    """A `docs generate` output of the demo's published files, renamed to ``project``."""
    artifacts = tmp_path / f"artifacts-{project}-{secrets.token_hex(3)}"
    artifacts.mkdir()
    current = served.location / "demo" / "current"
    for name in ("index.html", "catalog.json"):
        shutil.copyfile(current / name, artifacts / name)
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["metadata"]["project_name"] = project
    (artifacts / "manifest.json").write_text(json.dumps(manifest))
    return artifacts


def test_a_viewer_reads_only_the_docs_of_dags_they_may_read(served: Served, tmp_path: Path) -> None:
    """The viewer may read DAG dbt_docs (which publishes demo) but not other_dag (which publishes other)."""
    try:
        docs.publish_docs(_demo_artifacts(served, tmp_path, "other"), str(served.location), dag_id="other_dag")
        docs.publish_docs(_demo_artifacts(served, tmp_path, "orphan"), str(served.location))  # no DAG
        # The admin may read every DAG: both projects are listed, the orphan is refused with why.
        status, _, body = served.get("/dbt-docs/", served.token)
        assert status == 200 and b"href='demo/'" in body and b"href='other/'" in body, (status, body)
        assert b"orphan" not in body
        assert served.get("/dbt-docs/other/manifest.json", served.token)[0] == 200
        status, _, body = served.get("/dbt-docs/orphan/", served.token)
        assert status == 404 and b"record no publishing DAG, so nobody may read them" in body, body
        # The viewer: demo only, so the root goes straight to it; other is forbidden, its content unseen.
        status, headers, _ = served.get("/dbt-docs/", served.viewer_token)
        assert status == 307 and headers["location"] == "demo/", (status, headers)
        assert served.get("/dbt-docs/demo/", served.viewer_token)[0] == 200
        assert served.get("/dbt-docs/demo/manifest.json", served.viewer_token)[0] == 200
        for path in ("/dbt-docs/other/", "/dbt-docs/other/manifest.json", "/dbt-docs/other/catalog.json"):
            status, _, body = served.get(path, served.viewer_token, accept=HTML)
            assert status == 403 and b"customer_orders" not in body, (path, status, body[:300])
            assert b"ask an Airflow admin for read access to that DAG" in body, body
    finally:
        for project in ("other", "orphan"):
            shutil.rmtree(served.location / project, ignore_errors=True)


def test_a_browser_without_login_goes_to_the_login_page(served: Served) -> None:
    for token in (None, "not-a-jwt"):
        status, headers, body = served.get("/dbt-docs/demo/", token, cookie=True, accept=HTML)
        assert status in (302, 303, 307), (token, status, headers, body[:300])
        login, _, query = headers["location"].partition("?")
        assert login.endswith("/login"), headers["location"]
        assert urllib.parse.parse_qs(query)["next"] == [f"{served.base}/dbt-docs/demo/"], query
    # API clients (a bearer token, or no HTML wanted) still get the plain refusal.
    assert served.get("/dbt-docs/demo/", "not-a-jwt", accept=HTML)[0] in (401, 403)
    assert served.get("/dbt-docs/demo/manifest.json")[0] == 401


def test_object_storage_serves_only_what_was_published(tmp_path: Path) -> None:
    """The same index and hash check on object storage (fsspec's memory:// as s3:// or gs:// would be)."""
    src = tmp_path / "gen"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"metadata": {"project_name": "demo",
                                                                "generated_at": "2026-03-01T10:00:00Z"}}))
    (src / "catalog.json").write_text("{}")
    (src / "index.html").write_text("published")
    where = f"memory://docs-{secrets.token_hex(4)}/site"
    docs.publish_docs(src, where, dag_id="dag_a")
    docs.publish_docs(src, where, dag_id="dag_b")  # another DAG publishing the same project
    site = docs.DocsSite(where)
    assert site.read("demo", "index.html") == b"published"
    assert site.publishers("demo") == {"dag_a", "dag_b"}
    version = docs._storage(where, None) / "demo" / "versions" / site.version("demo")
    (version / "index.html").write_bytes(PLANTED)
    with pytest.raises(docs.DocsError, match="was changed after it was published"):
        site.read("demo", "index.html")
    (version / "static_index.html").write_bytes(PLANTED)
    with pytest.raises(docs.DocsError, match="was not written by the publisher"):
        site.read("demo", "static_index.html")
    (version / docs.INDEX).unlink()
    with pytest.raises(docs.DocsError, match="no valid index of published files"):
        site.read("demo", "catalog.json")
