"""Issue "Many tasks at once": concurrent builds on one project and one fresh runtime root.

Eight builds start together on a root no run has used, so all of them build the shared shadow, seed
the partial-parse cache and prune at once. Every run must succeed for its own reasons, read its own
``run_results.json`` and leave no run dir behind.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.core import ConnectionInfo, DbtCommand, DbtInvoker, ProfileConfig
from dlh_airflow_common.core.runtime import IN_USE

RUNS = 8


def _eight_builds(project: Path, root: Path, conn_for: Any) -> list[Any]:
    results: list[Any] = [None] * RUNS
    start = threading.Barrier(RUNS)

    def work(i: int) -> None:
        profile = ProfileConfig(connection=conn_for(i), schema_override=f"e{i}")
        inv = DbtInvoker(project, profile, runtime_root=root)
        start.wait(30)
        try:
            results[i] = inv.invoke(DbtCommand("build", exclude="test_type:data"))
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(RUNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results


def _check_round(results: list[Any], root: Path, relation_of: Any) -> None:
    failures = [f"run {i}: {type(r).__name__}: {r}" for i, r in enumerate(results) if isinstance(r, Exception)]
    assert not failures, "\n".join(failures)
    for i, result in enumerate(results):
        assert result.success and result.summary.counts.get("success", 0) >= 4, (i, result.summary)
        relations = {r.get("relation_name") for r in result.run_results["results"] if r.get("relation_name")}
        assert relations and all(relation_of(i) in str(rel) for rel in relations), (i, relations)
    ids = {r.run_results["metadata"]["invocation_id"] for r in results}
    assert len(ids) == RUNS  # each read its own run_results.json
    assert list((root / "runs").iterdir()) == []  # no run dir left
    shadows = [p for p in (root / "projects").glob("*/shadows/*") if p.is_dir()]
    assert shadows and all((p / IN_USE).is_file() for p in shadows)


@pytest.mark.parametrize("warm", ["cold", "warm"])
def test_eight_builds_at_once_on_a_fresh_root_on_postgres(warm: str, demo_project: Path, pg_conn: ConnectionInfo,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLH_DBT_WARM_START", "1" if warm == "warm" else "0")
    monkeypatch.setenv("DLH_DBT_WARM_DIR", str(tmp_path / "warm"))
    rounds = 2 if warm == "cold" else 1
    for n in range(rounds):
        root = tmp_path / f"root{n}"
        # Packages come from dbt deps into the root first; nothing else of the root is made yet.
        DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=root).invoke(DbtCommand("deps"))
        if warm == "warm":  # a second dbt start soon after the first starts the warm server
            DbtInvoker(demo_project, ProfileConfig(connection=pg_conn), runtime_root=root).invoke(
                DbtCommand("deps"))
        results = _eight_builds(demo_project, root, lambda i: pg_conn)
        _check_round(results, root, lambda i: f'"e{i}"')


def test_eight_builds_at_once_on_duckdb_one_file_each(demo_project: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLH_DBT_WARM_START", "0")
    root = tmp_path / "root"

    def conn(i: int) -> ConnectionInfo:
        return ConnectionInfo("duck", "duckdb", host=str(tmp_path / f"w{i}.duckdb"), extra={"threads": 2})

    DbtInvoker(demo_project, ProfileConfig(connection=conn(0)), runtime_root=root).invoke(DbtCommand("deps"))
    results = _eight_builds(demo_project, root, conn)
    _check_round(results, root, lambda i: f'"w{i}"."e{i}"')


def test_a_workspace_that_cannot_be_made_is_our_error_and_leaves_nothing(
        demo_project: Path, duck: ConnectionInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path that vanishes under a run (another process removed it) fails as a classified error
    that names it, and the run's dir is removed."""
    from dlh_airflow_common.core import DbtRuntimeException
    from dlh_airflow_common.core import runtime as rt

    gone = tmp_path / "shadows" / "v1" / "models"

    def vanishing(*_args: object, **_kw: object) -> Path:
        raise FileNotFoundError(2, "No such file or directory", str(gone))

    monkeypatch.setattr(rt._ShadowLayout, "build", vanishing)
    root = tmp_path / "root"
    with pytest.raises(DbtRuntimeException) as raised:
        DbtInvoker(demo_project, ProfileConfig(connection=duck), runtime_root=root).invoke(DbtCommand("build"))
    headline = str(raised.value).splitlines()[0]
    assert f"{gone} vanished" in headline and "Could not prepare the dbt workspace" in headline, headline
    assert list((root / "runs").iterdir()) == []
