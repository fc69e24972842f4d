"""A project on a real read-only bind mount (as git-sync gives it): every dbt command still works."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_in_mount_namespace

SCRIPT = textwrap.dedent(
    """
    import errno, json, subprocess, sys
    from pathlib import Path
    src, mnt, root, db, report = map(Path, sys.argv[1:6])
    subprocess.run(["mount", "--bind", str(src), str(mnt)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
    out = {}
    try:
        (mnt / "demo_project" / "probe").write_text("x")
        out["writable"] = True
    except OSError as exc:
        out["writable"] = exc.errno != errno.EROFS
    from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig
    conn = ConnectionInfo("duck", "duckdb", host=str(db))
    for cmd in ["deps", "build", "docs generate", "source freshness"]:
        inv = DbtInvoker(mnt / "demo_project", ProfileConfig(connection=conn), runtime_root=root)
        try:
            res = inv.invoke(DbtCommand(cmd))
            out[cmd] = {"ok": res.success, "counts": res.summary.counts}
        except Exception as exc:
            out[cmd] = {"ok": False, "error": str(exc)[-3000:]}
    report.write_text(json.dumps(out))
    """
)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_all_commands_work_on_a_read_only_mount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("demo_project", "demo_pkg"):
        shutil.copytree(EXAMPLES / name, src / name)
    mnt, root = tmp_path / "mnt", tmp_path / "runtime"
    mnt.mkdir()
    before = _tree(src)
    out = run_in_mount_namespace(SCRIPT, tmp_path, src, mnt, root, tmp_path / "wh.duckdb")
    assert out["writable"] is False, "the mount is not read-only: the test would prove nothing"
    for cmd in ["deps", "build", "docs generate", "source freshness"]:
        assert out[cmd]["ok"], (cmd, out[cmd])
    assert out["build"]["counts"] == {"success": 5, "pass": 4, "warn": 1}
    assert out["source freshness"]["counts"] == {"pass": 1}
    assert _tree(src) == before, "dbt wrote into the project"
    # deps results (package + lock file) went to the runtime root, visible to later runs
    cache = next((root / "projects").iterdir())
    assert (cache / "package-lock.yml").is_file()
    # the local package is linked to its real directory (on the mount), not through a run's shadow
    assert (cache / "packages" / "demo_pkg").readlink() == mnt / "demo_pkg"
    assert list((root / "runs").iterdir()) == []  # every run cleaned up after itself
