"""What `make demo-ui` promises, checked in a real browser: a user logs in through the login form, opens a
node task's log and sees our progress lines, and follows the task's "dbt Docs" link to the model's page.

The stack is the one `make demo-ui` starts (examples/demo_ui.py: api-server, scheduler, dag-processor and
triggerer on a SQLite home, the admin password as Airflow's simple auth manager generated it), running the
small DAG of the docs tests (tests/docs_dags: deps, build, one per-node task, docs generate) instead of the
Salesforce pipeline. Headless Chromium is driven over the DevTools protocol (the UI is a React app: the
page is checked as rendered, after its scripts ran), typing into the form as a user does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, REPO
from tests.pgserver import free_port
from tests.test_docs_plugin import _chromium

sys.path.insert(0, str(EXAMPLES))
import demo_ui  # examples/demo_ui.py, what `make demo-ui` runs

DOCS_DAGS = REPO / "tests" / "docs_dags"
DAG_ID, NODE_TASK = "dbt_docs", "model.customer_orders"
ARTIFACTS = REPO / "tests" / "artifacts"  # gitignored: screenshots of the pages checked


@dataclass
class DemoStack:
    stack: Any
    api: Any
    run_id: str
    phases: list[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    tmp = tmp_path_factory.mktemp("demo-ui")
    home, runtime = tmp / "airflow", tmp / "dbt-runtime"
    shutil.copytree(EXAMPLES / "demo_project", tmp / "demo_project")
    shutil.copytree(EXAMPLES / "demo_pkg", tmp / "demo_pkg")  # the project's local package
    for path in (home, runtime):
        path.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DLH_", "DBT_", "_AIRFLOW"))}
    base.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DOCS_DAGS),
        "DLH_DBT_RUNTIME_ROOT": str(runtime),
        "DLH_DOCS_PROJECT_DIR": str(tmp / "demo_project"),
        "AIRFLOW_CONN_DOCS_DUCK": json.dumps({"conn_type": "duckdb", "host": str(tmp / "docs.duckdb")}),
    })
    port = free_port()
    stack = demo_ui.AirflowStack(home, demo_ui.stack_env(home, port, base), port)
    started, phases = time.monotonic(), []
    try:
        api = demo_ui.start(stack, port)
        phases.append(f"api up {time.monotonic() - started:.0f}s")
        demo_ui.wait_parsed(api, stack, (DAG_ID,))
        run_id, state, took = demo_ui.run_dag(api, stack, DAG_ID, timeout=300)
        phases.append(f"DAG run {state} in {took:.0f}s")
        assert state == "success", f"{DAG_ID} ended {state}\n{stack.report()}"
        yield DemoStack(stack, api, run_id, phases)
    finally:
        survivors = stack.stop()
        print("demo-ui phases:", ", ".join(phases))
    assert not survivors, f"processes survived the stack: {survivors}"


class Browser:
    """Headless Chromium over the DevTools protocol: one tab, driven like a user."""

    def __init__(self, chromium: str, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,900", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ws_url, seen = "", []
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while not ws_url and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                ws_url = m.group(1)
        assert ws_url, f"Chromium did not open its DevTools endpoint:\n{''.join(seen)[-3000:]}"
        self.exits = contextlib.ExitStack()
        self.ws = self.exits.enter_context(connect(ws_url, max_size=None, open_timeout=30))
        self.next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> Any:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def go(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def until(self, what: str, expression: str, timeout: float = 60) -> Any:
        """Poll a JS expression in the page until it is truthy; fail with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if value := self.js(expression):
                    return value
            except (AssertionError, TimeoutError):  # a navigation in flight destroys the context
                pass
            time.sleep(0.5)
        text = self.js("document.body ? document.body.innerText : ''") or ""
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} at {self.js('location.href')}\n"
                    f"page text (tail):\n{text[-3000:]}")

    def type_into(self, selector: str, text: str) -> None:
        """Focus a field and type into it (real input events, as the form's React code expects)."""
        assert self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                       " if (!e) return false; e.focus(); return true; })()"), f"no {selector} on the page"
        self.send("Input.insertText", {"text": text}, session=True)

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.exits.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def test_a_user_logs_in_reads_a_node_log_and_follows_its_dbt_docs_link(demo: DemoStack, tmp_path: Path) -> None:
    api, run_id = demo.api, demo.run_id
    task_page = (f"{api.base}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}"
                 f"/tasks/{urllib.parse.quote(NODE_TASK, safe='')}")
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.monotonic()
    browser = Browser(_chromium(), tmp_path / "profile")
    try:
        # Not logged in: the UI sends the browser to the login form; the user types and signs in.
        browser.go(task_page)
        browser.until("the login form", "!!document.querySelector('input[type=password]')")
        browser.type_into("input[name=username]", api.user)
        browser.type_into("input[type=password]", api.password)
        browser.until("the Sign in button to be enabled",
                      "(() => { const b = [...document.querySelectorAll('button[type=submit]')]"
                      ".find(x => x.innerText.includes('Sign in')); return !!b && !b.disabled; })()")
        browser.js("[...document.querySelectorAll('button[type=submit]')]"
                   ".find(x => x.innerText.includes('Sign in')).click()")
        browser.until("the login to land back in the UI",
                      "!document.querySelector('input[type=password]') && location.pathname.startsWith('/dags')")
        logged_in = time.monotonic() - started
        # The node task's page: its log as the UI renders it (the default tab), with our progress lines.
        if not browser.js("location.href").startswith(task_page):
            browser.go(task_page)
        text = browser.until("the node task's log with dbt's progress lines",
                             "(() => { const t = document.body.innerText;"
                             " return t.includes('OK model.demo.customer_orders') && t.includes('dbt summary:')"
                             " ? t : ''; })()", timeout=90)
        assert "Traceback" not in text, text[-3000:]
        browser.screenshot(ARTIFACTS / "demo-ui-task-log.png")
        log_seen = time.monotonic() - started
        # The task's "dbt Docs" extra link, on the task page's Details tab, followed like a user would.
        browser.js("[...document.querySelectorAll('a, button')].find(x => x.innerText.trim() === 'Details').click()")
        href = browser.until("the task's 'dbt Docs' extra link",
                             "(() => { const a = [...document.querySelectorAll('a')]"
                             ".find(x => x.innerText.trim() === 'dbt Docs' && x.href.includes('/dbt-docs/'));"
                             " return a ? a.href : ''; })()")
        assert href == f"{api.base}/dbt-docs/demo/#!/model/model.demo.customer_orders", href
        browser.screenshot(ARTIFACTS / "demo-ui-task-details.png")
        browser.go(href)
        # Only the project's manifest and catalog (fetched by the docs page with the login cookie) hold
        # the model's column and its warehouse type.
        browser.until("the model's page of the dbt docs",
                      "(() => { const t = document.body.innerText;"
                      " return t.includes('customer_orders') && t.includes('lifetime_value')"
                      " && t.includes('DOUBLE'); })()", timeout=60)
        browser.screenshot(ARTIFACTS / "demo-ui-dbt-docs.png")
        demo.phases.append(f"browser: login {logged_in:.0f}s, log {log_seen:.0f}s, "
                           f"docs {time.monotonic() - started:.0f}s")
    finally:
        browser.close()
