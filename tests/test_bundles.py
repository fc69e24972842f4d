"""A dbt project inside a Git DAG bundle (Airflow 3's replacement for git-sync), offline: a local git repo
is the bundle's source, each version is checked out to its own path by Airflow's own GitDagBundle.

In each shape the project renders, runs and retries from a version's checkout without writing into it;
a new version with a changed model is rendered anew (its own cache) and runs the change; once Airflow
removes an old version's checkout, retention prunes that version's project cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.render_project import make_render_project

DAG_FILE = textwrap.dedent('''
    """dbt DAGs of the project next to this file, in every shape (tests/test_bundles.py)."""
    import os
    from datetime import datetime, timedelta
    from pathlib import Path

    from airflow.sdk import DAG  # noqa: F401  (Airflow finds DAG files by these words)

    from dlh_airflow_common.rendering import DbtProject, dbt_dag

    PROJECT = Path(__file__).parent / "gen"
    FLAKY = os.environ["DLH_BUNDLE_FLAKY_CSV"]
    LAYERS = {"first": "resource_type:seed path:models/staging", "rest": "path:models/marts"}

    def make_flaky_pass(context):
        Path(FLAKY).write_text("x\\n1\\n")

    for shape in ("single", "layers", "nodes"):
        globals()[shape] = dbt_dag(f"bundle_{shape}", DbtProject(
            project_dir=str(PROJECT), conn_id="bundle_duck", shape=shape, select=["+flaky+"],
            layers=LAYERS if shape == "layers" else {}, vars={"flaky": True}, env_vars={"DLH_FLAKY_CSV": FLAKY},
            operator_args={"retries": 1, "retry_delay": timedelta(0), "on_retry_callback": make_flaky_pass}),
            schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
''')


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}).stdout.strip()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _checkout(repo: Path, version: str | None = None) -> tuple[Path, str]:
    """Airflow's GitDagBundle at ``version`` (None: the tracking ref's head); its path and version."""
    from airflow.providers.git.bundles.git import GitDagBundle

    bundle = GitDagBundle(name="dbt_repo", tracking_ref="main", git_conn_id="dbt_repo_git", version=version)
    bundle.initialize()
    current = bundle.get_current_version()
    return bundle.path, str(getattr(current, "version", current))  # a BundleVersion from Airflow 3.3


def _project_caches(runtime: Path) -> dict[str, Path]:
    """The runtime root's project caches, by the project dir each was made for."""
    return {(c / ".dlh_project").read_text(): c for c in (runtime / "projects").iterdir()
            if (c / ".dlh_project").is_file()}


def _run(bag: Any, dag_id: str) -> Any:
    dag = bag.get_dag(dag_id)
    assert dag is not None, bag.import_errors
    return dag.test()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    make_render_project(repo / "dags" / "gen")
    # not dbt_*.py: Airflow puts a bundle's path on sys.path, and dbt imports every dbt_* module there
    (repo / "dags" / "bundle_dags.py").write_text(DAG_FILE)
    _git(tmp_path, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "v1")
    monkeypatch.setattr(sys, "path", list(sys.path))  # what the bundles put there goes with the test
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", str(tmp_path / "bundles"))
    monkeypatch.setenv("DLH_BUNDLE_FLAKY_CSV", str(tmp_path / "flaky.csv"))
    monkeypatch.setenv("AIRFLOW_CONN_DBT_REPO_GIT", json.dumps({"conn_type": "git", "host": str(repo)}))
    # The deployment's bundle list: dag.test() syncs the DAGs of the configured bundles to the metadata DB
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
        "name": "dbt_repo", "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
        "kwargs": {"tracking_ref": "main", "git_conn_id": "dbt_repo_git", "subdir": "dags"}}]))
    monkeypatch.setenv("AIRFLOW_CONN_BUNDLE_DUCK", json.dumps({"conn_type": "duckdb",
                                                                "host": str(tmp_path / "wh.duckdb")}))
    return repo


def test_a_project_in_a_git_bundle_runs_each_shape_and_follows_new_versions(
        airflow_db: None, repo: Path, tmp_path: Path) -> None:
    import duckdb
    from airflow.dag_processing.dagbag import DagBag

    from dlh_airflow_common.core.retention import Retention, prune

    runtime = Path(os.environ["DLH_DBT_RUNTIME_ROOT"])
    v1_path, v1 = _checkout(repo)
    v1_path, _ = _checkout(repo, v1)  # as a worker gets it: the version's own checkout
    assert v1 in str(v1_path), v1_path
    before = _tree(v1_path)
    bag = DagBag(str(v1_path / "dags"))
    assert not bag.import_errors, bag.import_errors
    flaky = Path(os.environ["DLH_BUNDLE_FLAKY_CSV"])
    for shape in ("single", "layers", "nodes"):
        flaky.unlink(missing_ok=True)
        dr = _run(bag, f"bundle_{shape}")
        assert dr.state == "success", (shape, [(t.task_id, t.state) for t in dr.get_task_instances()])
        tries = {t.task_id: t.try_number for t in dr.get_task_instances()}
        assert max(tries.values()) == 2, (shape, tries)  # the flaky model's task failed once, then retried
    assert set(bag.get_dag("bundle_nodes").task_ids) == {"seed.raw_events", "model.stg_b", "model.flaky"}
    assert _tree(v1_path) == before, "a run wrote into the bundle's checkout"

    # v2: a changed model and a new child of flaky; the bundle's new version is a new path
    (repo / "dags" / "gen" / "models" / "marts" / "after_flaky.sql").write_text(
        "select count(*) as n, 2 as version from {{ ref('flaky') }}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "v2")
    _, v2 = _checkout(repo)
    v2_path, _ = _checkout(repo, v2)
    assert v2 != v1 and v2_path != v1_path
    bag2 = DagBag(str(v2_path / "dags"))
    assert "model.after_flaky" in bag2.get_dag("bundle_nodes").task_ids  # rendered anew, not v1's cache
    assert "model.after_flaky" not in DagBag(str(v1_path / "dags")) \
        .get_dag("bundle_nodes").task_ids  # and v1 still renders as v1
    flaky.unlink(missing_ok=True)
    assert _run(bag2, "bundle_nodes").state == "success"
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("select version from main.after_flaky").fetchall() == [(2,)]

    # Airflow's stale-bundle cleanup removes v1's checkout: retention then prunes v1's project cache only
    caches = _project_caches(runtime)
    assert str(v1_path / "dags" / "gen") in caches and str(v2_path / "dags" / "gen") in caches, caches
    prune(runtime, Retention(min_age=0))
    assert str(v1_path / "dags" / "gen") in _project_caches(runtime)  # its project is still there: kept
    subprocess.run(["rm", "-rf", str(v1_path)], check=True)
    removed = prune(runtime, Retention(min_age=0))
    assert caches[str(v1_path / "dags" / "gen")] in removed
    assert str(v1_path / "dags" / "gen") not in _project_caches(runtime)
    assert str(v2_path / "dags" / "gen") in _project_caches(runtime)
