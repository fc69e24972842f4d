"""Two tasks on one DuckDB file wait for each other; a file held elsewhere is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dlh_airflow_common.core import DbtDuckDBLockedException, DbtTaskResult
from dlh_airflow_common.core.duckdb_lock import duckdb_file
from dlh_airflow_common.hooks.dbt import DbtHook


@pytest.fixture
def duck_conn_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {"conn_type": "duckdb", "host": str(tmp_path / "shared.duckdb"), "extra": {"threads": 2}}
    monkeypatch.setenv("AIRFLOW_CONN_DUCK_SHARED", json.dumps(conn))
    return "duck_shared"


def _hook(project: Path, root: Path, lines: list[str], **kw: object) -> DbtHook:
    return DbtHook(project, conn_id="duck_shared", runtime_root=str(root), progress=lines.append,
                   **kw)  # type: ignore[arg-type]


def _holder_process(code: str) -> subprocess.Popen[str]:
    """Another program that holds something until its stdin closes; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('held', flush=True)\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _user_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's own profiles.yml on the same file, its folder read from the environment."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "profiles.yml").write_text(
        "demo:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
        "      path: \"{{ env_var('DLH_TEST_WAREHOUSE_DIR') }}/shared.duckdb\"\n      threads: 2\n")
    monkeypatch.setenv("DLH_TEST_WAREHOUSE_DIR", str(tmp_path))
    return folder


@pytest.mark.parametrize("profile", ["connection", "user profiles_dir"])
def test_two_builds_on_one_file_take_turns(demo_project: Path, duck_conn_id: str, tmp_path: Path,
                                           runtime_root: Path, profile: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    setup: list[str] = []
    _hook(demo_project, runtime_root, setup).run_dbt_task("deps")
    make = _hook
    if profile != "connection":
        folder = _user_profiles(tmp_path, monkeypatch)

        def make(project: Path, root: Path, lines: list[str], **kw: object) -> DbtHook:
            return DbtHook(project, profiles_dir=str(folder), runtime_root=str(root), progress=lines.append)
    lock_file = tmp_path / "shared.duckdb.dlh-lock"
    logs: dict[str, list[str]] = {"first": [], "second": []}
    results: dict[str, DbtTaskResult | BaseException] = {}

    def build(name: str) -> None:
        try:
            results[name] = make(demo_project, runtime_root, logs[name]).run_dbt_task("build")
        except BaseException as exc:
            results[name] = exc

    first = threading.Thread(target=build, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    while '"run": "run_' not in (lock_file.read_text() if lock_file.exists() else ""):
        assert time.monotonic() < deadline, "the first build never took the DuckDB lock"
        time.sleep(0.05)
    second = threading.Thread(target=build, args=("second",))
    second.start()
    first.join(300)
    second.join(300)
    for name in ("first", "second"):
        assert isinstance(results[name], DbtTaskResult) and results[name].success, results[name]  # type: ignore[union-attr]
    waited = [ln for ln in logs["second"] if ln.startswith("Waiting for DuckDB file")]
    assert len(waited) == 1, logs["second"]
    assert str(tmp_path / "shared.duckdb") in waited[0] and "held by run run_" in waited[0]
    assert "Waiting" not in "\n".join(logs["first"])
    assert lock_file.read_text() == ""  # released, nobody named as holder


def test_a_wait_that_runs_out_names_the_holder(demo_project: Path, duck_conn_id: str, tmp_path: Path,
                                               runtime_root: Path) -> None:
    lines: list[str] = []
    _hook(demo_project, runtime_root, lines).run_dbt_task("deps")
    lock_file = tmp_path / "shared.duckdb.dlh-lock"
    holder = _holder_process(
        "import fcntl, json, sys\n"
        f"fh = open({str(lock_file)!r}, 'a+')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "fh.write(json.dumps({'run': 'run_other_task', 'pid': 4242, 'host': 'worker-7', 'since': 'now'}))\n"
        "fh.flush()")
    try:
        assert _hook(demo_project, runtime_root, lines).run_dbt_task("parse").success  # parse: no lock
        started = time.monotonic()
        with pytest.raises(DbtDuckDBLockedException) as err:
            _hook(demo_project, runtime_root, lines, duckdb_lock_wait=2).run_dbt_task("build")
        assert 2 <= time.monotonic() - started < 30
    finally:
        holder.communicate("")
    text = str(err.value)
    assert "still held by run run_other_task (pid 4242 on worker-7" in text and "after waiting 2s" in text
    assert any("Waiting for DuckDB file" in ln and "run_other_task" in ln for ln in lines), lines


def test_a_file_another_program_holds_is_a_clear_lock_error(demo_project: Path, duck_conn_id: str,
                                                            tmp_path: Path, runtime_root: Path) -> None:
    lines: list[str] = []
    _hook(demo_project, runtime_root, lines).run_dbt_task("deps")
    db = tmp_path / "shared.duckdb"
    holder = _holder_process(f"import duckdb, sys\ncon = duckdb.connect({str(db)!r})")
    try:
        with pytest.raises(DbtDuckDBLockedException) as err:
            _hook(demo_project, runtime_root, lines, retry_limit=2, retry_delay=0.1).run_dbt_task("build")
    finally:
        holder.communicate("")
    exc = err.value
    assert f"another process holds the DuckDB file {db}" in exc.message, exc.message
    assert "Conflicting lock is held" in exc.message and exc.attempts == 1  # the cause, not retried


@pytest.mark.parametrize(("output", "words", "expected"), [
    ({"type": "duckdb", "path": "/data/wh.duckdb"}, ["build"], Path("/data/wh.duckdb")),
    ({"type": "duckdb", "path": "/data/wh.duckdb"}, ["source", "freshness"], Path("/data/wh.duckdb")),
    ({"type": "duckdb", "path": "/data/wh.duckdb"}, ["parse"], None),
    ({"type": "duckdb", "path": "/data/wh.duckdb"}, ["ls"], None),
    ({"type": "duckdb", "path": "/data/wh.duckdb"}, ["deps"], None),
    ({"type": "duckdb", "path": ":memory:"}, ["build"], None),
    ({"type": "duckdb", "path": "md:my_db"}, ["build"], None),
    ({"type": "postgres", "host": "db"}, ["build"], None),
])
def test_which_commands_lock_which_file(output: dict[str, str], words: list[str],
                                        expected: Path | None) -> None:
    assert duckdb_file(output, words) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("{{ env_var('WH_DIR') }}/wh.duckdb", "/data/wh.duckdb"),
    ("{{env_var(\"WH_DIR\")}}/{{ env_var('WH_NAME', 'wh') }}.duckdb", "/data/wh.duckdb"),
    ("{{ env_var('NOT_SET_ANYWHERE', '/tmp/fallback.duckdb') }}", "/tmp/fallback.duckdb"),
])
def test_env_var_in_a_path_is_read_as_dbt_reads_it(path: str, expected: str) -> None:
    env = {"WH_DIR": "/data"}
    assert duckdb_file({"type": "duckdb", "path": path}, ["build"], env) == Path(expected)


@pytest.mark.parametrize(("path", "why"), [
    ("{{ env_var('NOT_SET_ANYWHERE') }}/wh.duckdb", "the environment variable NOT_SET_ANYWHERE it reads is not set"),
    ("/data/{{ var('db') }}.duckdb", "it uses Jinja other than env_var(), which only dbt renders"),
])
def test_a_path_that_cannot_be_read_takes_no_lock_and_says_why(path: str, why: str) -> None:
    said: list[str] = []
    assert duckdb_file({"type": "duckdb", "path": path}, ["build"], {}, said.append) is None
    assert said == [f"No DuckDB file lock taken for path {path!r}: {why}; tasks writing the same file at "
                    "once may fail with DuckDB's lock conflict"]


def test_a_bad_wait_is_refused(demo_project: Path, runtime_root: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.core import ConnectionInfo, DbtInvoker, ProfileConfig

    profile = ProfileConfig(connection=ConnectionInfo("d", "duckdb", host="/x.duckdb"))
    with pytest.raises(ValueError, match="duckdb_lock_wait=-1 must be seconds >= 0"):
        DbtInvoker(demo_project, profile, runtime_root=runtime_root, duckdb_lock_wait=-1)
    monkeypatch.setenv("DLH_DUCKDB_LOCK_WAIT", "an hour")
    with pytest.raises(ValueError, match="DLH_DUCKDB_LOCK_WAIT='an hour' is not a number of seconds"):
        DbtInvoker(demo_project, profile, runtime_root=runtime_root)
    monkeypatch.setenv("DLH_DUCKDB_LOCK_WAIT", "90")
    assert DbtInvoker(demo_project, profile, runtime_root=runtime_root).duckdb_lock_wait == 90
