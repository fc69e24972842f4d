"""Every project layout dbt accepts runs through our isolated runtime as it does with bare dbt.

Each test builds a tiny real layout (a package whose macro a model calls), runs real ``dbt deps`` and
``dbt build`` on DuckDB through ``DbtHook``, and where useful compares the packages we installed with
what bare ``dbt deps`` installs from the same checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlh_airflow_common.hooks.dbt import DbtHook
from tests.conftest import run_in_mount_namespace

DBT = Path(sys.executable).parent / "dbt"
PACKAGE = "answers"


@pytest.fixture
def duck_conn_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {"conn_type": "duckdb", "host": str(tmp_path / "wh.duckdb"), "extra": {"threads": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_DUCK_LAYOUTS", json.dumps(conn))
    return "duck_layouts"


def write_package(root: Path) -> Path:
    """A dbt package with one macro; ``root`` may already hold other things (a test project)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dbt_project.yml").write_text(f"name: {PACKAGE}\nversion: '1.0'\nconfig-version: 2\n")
    (root / "macros").mkdir()
    (root / "macros" / "answer.sql").write_text("{% macro answer() %}42{% endmacro %}\n")
    return root


def write_project(root: Path, local: str, *, deps_file: str = "packages.yml",
                  install_path: str | None = None) -> Path:
    """A project whose model calls the package's macro and whose test checks the value."""
    (root / "models").mkdir(parents=True)
    extra = f"packages-install-path: {json.dumps(install_path)}\n" if install_path else ""
    (root / "dbt_project.yml").write_text(
        f"name: layout_project\nversion: '1.0'\nconfig-version: 2\nprofile: layouts\n{extra}")
    (root / deps_file).write_text(f"packages:\n  - local: {json.dumps(local)}\n")
    (root / "models" / "answer_model.sql").write_text(f"select {{{{ {PACKAGE}.answer() }}}} as answer\n")
    (root / "models" / "schema.yml").write_text(textwrap.dedent("""\
        version: 2
        models:
          - name: answer_model
            columns:
              - name: answer
                data_tests:
                  - accepted_values: {arguments: {values: [42], quote: false}}
        """))
    return root


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (links not followed): what must not change when we run dbt."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def run_deps_and_build(project: Path, conn_id: str, runtime_root: Path, models: int = 1) -> None:
    hook = DbtHook(project, conn_id=conn_id, runtime_root=str(runtime_root))
    assert hook.run_dbt_task("deps").success
    result = hook.run_dbt_task("build")
    assert result.summary.counts == {"success": models, "pass": 1}, result.summary.failures
    assert list((runtime_root / "runs").iterdir()) == []


def installed(packages_dir: Path) -> dict[str, Path]:
    """Package name -> the real directory dbt will read it from."""
    return {p.name: p.resolve() for p in packages_dir.iterdir()}


def published(runtime_root: Path) -> dict[str, Path]:
    (cache,) = (runtime_root / "projects").iterdir()
    return installed(cache / "packages")


def bare_dbt_deps(project_dir: Path, tmp_path: Path) -> None:
    """What dbt itself does with this checkout (it writes into the project: run it last)."""
    profiles = tmp_path / "bare_profiles"
    profiles.mkdir(exist_ok=True)
    env = {**os.environ, "DBT_PROFILES_DIR": str(profiles), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    proc = subprocess.run([str(DBT), "deps", "--project-dir", str(project_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("nesting", [("integration_tests",), ("ci", "integration_tests")],
                         ids=["parent", "grandparent"])
def test_package_own_test_project_with_ancestor_local_package(
        tmp_path: Path, nesting: tuple[str, ...], duck_conn_id: str, runtime_root: Path) -> None:
    package = write_package(tmp_path / "repo" / PACKAGE)
    project = write_project(package.joinpath(*nesting), "../" * len(nesting))
    before = tree(tmp_path / "repo")
    run_deps_and_build(project, duck_conn_id, runtime_root)
    # The shared shadow's path is stable through the mirror: the next run reuses the build's parse.
    kept = DbtHook(project, conn_id=duck_conn_id, runtime_root=str(runtime_root), keep_target_artifacts=True)
    parsed = kept.run_dbt_task("parse")
    assert parsed.target_dir is not None
    log = (parsed.target_dir.parent / "logs" / "dbt.log").read_text()
    assert "Partial parsing enabled: 0 files deleted, 0 files added, 0 files changed" in log
    shutil.rmtree(parsed.target_dir.parent)
    assert tree(tmp_path / "repo") == before, "dbt wrote into the checkout"
    ours = published(runtime_root)
    assert ours == {PACKAGE: package}
    bare_dbt_deps(project, tmp_path)
    assert installed(project / "dbt_packages") == ours


def test_symlinked_project_dir_resolves_packages_from_its_real_location(
        tmp_path: Path, duck_conn_id: str, runtime_root: Path) -> None:
    real = tmp_path / "checkout"
    package = write_package(real / "pkg")
    write_project(real / "project", "../pkg")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "project"
    link.symlink_to(real / "project")  # as a DAG bundle or git-sync worktree link would
    run_deps_and_build(link, duck_conn_id, runtime_root)
    assert published(runtime_root) == {PACKAGE: package}
    bare_dbt_deps(link, tmp_path)
    assert installed(link / "dbt_packages") == {PACKAGE: package}


@pytest.mark.parametrize("local", ["../pkg", "../"], ids=["sibling", "parent"])
def test_dependencies_yml_instead_of_packages_yml(tmp_path: Path, local: str, duck_conn_id: str,
                                                  runtime_root: Path) -> None:
    package = write_package(tmp_path / "pkg")
    project = write_project(package / "it" if local == "../" else tmp_path / "project", local,
                            deps_file="dependencies.yml")
    run_deps_and_build(project, duck_conn_id, runtime_root)
    assert published(runtime_root) == {PACKAGE: package}


@pytest.mark.parametrize("install_path", ["vendor", "vendor/pkgs"])
def test_relative_packages_install_path(tmp_path: Path, install_path: str, duck_conn_id: str,
                                        runtime_root: Path) -> None:
    package = write_package(tmp_path / "checkout" / "pkg")
    project = write_project(tmp_path / "checkout" / "project", "../pkg", install_path=install_path)
    if install_path == "vendor/pkgs":
        # The install dir's parent may hold the user's own files: they must stay visible to dbt.
        (project / "vendor").mkdir()
        (project / "vendor" / "README.md").write_text("vendored packages\n")
        # dbt runs in the project dir: a model reads the file by its relative path.
        (project / "models" / "vendored.sql").write_text("select content from read_text('vendor/README.md')\n")
    before = tree(tmp_path / "checkout")
    run_deps_and_build(project, duck_conn_id, runtime_root, models=1 + (install_path == "vendor/pkgs"))
    assert tree(tmp_path / "checkout") == before, "dbt wrote into the checkout"
    assert published(runtime_root) == {PACKAGE: package}
    bare_dbt_deps(project, tmp_path)
    assert installed(project / install_path) == {PACKAGE: package}


def test_absolute_packages_install_path(tmp_path: Path, duck_conn_id: str, runtime_root: Path) -> None:
    package = write_package(tmp_path / "repo" / PACKAGE)
    install = tmp_path / "shared_packages"
    project = write_project(package / "integration_tests", "../", install_path=str(install))
    before = tree(tmp_path / "repo")
    run_deps_and_build(project, duck_conn_id, runtime_root)
    assert tree(tmp_path / "repo") == before, "dbt wrote into the checkout"
    # dbt writes where the user told it to; the links must outlive our run directory.
    assert installed(install) == {PACKAGE: package}
    (cache,) = (runtime_root / "projects").iterdir()
    assert (cache / "package-lock.yml").is_file(), "the lock file of that deps run was not kept"


READ_ONLY_RUN = textwrap.dedent(
    """
    import errno, json, subprocess, sys
    from pathlib import Path
    src, mnt, project, root, db, report = map(Path, sys.argv[1:7])
    subprocess.run(["mount", "--bind", str(src), str(mnt)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
    out = {}
    try:
        (project / "probe").write_text("x")
        out["writable"] = True
    except OSError as exc:
        out["writable"] = exc.errno != errno.EROFS
    from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig
    conn = ConnectionInfo("duck", "duckdb", host=str(db))
    for cmd in ["deps", "build"]:
        inv = DbtInvoker(project, ProfileConfig(connection=conn), runtime_root=root)
        try:
            out[cmd] = inv.invoke(DbtCommand(cmd)).summary.counts
        except Exception as exc:
            out[cmd] = str(exc)[-3000:]
    report.write_text(json.dumps(out))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_ancestor_package_on_a_read_only_mount_keeps_the_committed_lock(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_project(write_package(src / PACKAGE) / "integration_tests", "../")
    # The lock file bare dbt writes, committed with the checkout: deps must install from it as is.
    scratch = tmp_path / "scratch"
    shutil.copytree(src, scratch, symlinks=True)
    bare_dbt_deps(scratch / PACKAGE / "integration_tests", tmp_path)
    lock = (scratch / PACKAGE / "integration_tests" / "package-lock.yml").read_bytes()
    (src / PACKAGE / "integration_tests" / "package-lock.yml").write_bytes(lock)
    mnt, root = tmp_path / "mnt", tmp_path / "runtime"
    mnt.mkdir()
    before = tree(src)
    out = run_in_mount_namespace(READ_ONLY_RUN, tmp_path, src, mnt, mnt / PACKAGE / "integration_tests",
                                 root, tmp_path / "wh.duckdb")
    assert out["writable"] is False, "the mount is not read-only: the test would prove nothing"
    assert out["deps"] == {}, out["deps"]  # deps runs no node: an error would be its message
    assert out["build"] == {"success": 1, "pass": 1}, out["build"]
    assert tree(src) == before, "dbt wrote into the checkout"
    (cache,) = (root / "projects").iterdir()
    assert (cache / "packages" / PACKAGE).readlink() == mnt / PACKAGE
    assert (cache / "package-lock.yml").read_bytes() == lock, "dbt re-resolved instead of using the lock"
    assert list((root / "runs").iterdir()) == []
