"""Every adapter mapping against its real dbt plugin: dbt loads the rendered profile, without a warehouse.

The profiles are rendered and written by the library (render_profile, ProfilesDir) and handed, with their
secret environment, to ``dbt parse`` in the plugins venv (tests/adapter_plugins). Three claims per case:
dbt accepts the profile; dbt rejects it once a key the plugin requires is dropped (so this harness can
see a missing or misspelled required key); and dbt knows every key we write (a key dbt does not know is
silently ignored, so each one is given a value of an impossible type and dbt must refuse it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.core.profiles import ADAPTERS, ProfilesDir, RenderedProfile, render_profile
from tests.adapter_plugins.cases import CASES
from tests.adapter_plugins.probe import PLUGINS
from tests.adapter_plugins.venv import REQUIREMENTS, PluginVenvUnavailable, ensure_venv

PROBE = Path(__file__).parent / "adapter_plugins" / "probe.py"
IMPOSSIBLE = [[{"__probe__": 1}]]  # no profile setting of any plugin takes a list of lists of maps


# Keys the plugin itself requires when it loads the profile, per adapter and per auth style:
# key -> what dbt's message names. dbt-duckdb and dbt-dremio require nothing there; dbt-databricks
# checks host, http_path and token, Redshift IAM its cluster, BigQuery and Snowflake their key only
# when they connect, so for those the library's own required fields are the guard (test_profile_fields).
DBT_REQUIRED: dict[str, dict[str, str]] = {
    "postgres": {"host": "host", "user": "user", "port": "port", "dbname": "database", "schema": "schema"},
    "redshift": {"host": "host", "port": "port", "dbname": "database", "schema": "schema"},
    "snowflake": {"account": "account", "database": "database", "schema": "schema"},
    "bigquery": {"method": "method"},
    "trino": {"host": "host", "user": "user", "database": "database", "schema": "schema"},
    "trino_ldap": {"password": "password"},  # proves method: ldap picked dbt-trino's LDAP credentials
}
# Keys a plugin reads without validating them, so an impossible value cannot show that dbt knows them.
UNVALIDATED: dict[str, str] = {
    "trino:method": "dbt-trino picks its credentials class by method and falls back to none; "
                    "trino_ldap's required password shows ldap is read",
}


def _adapter(case: str) -> str:
    return case.split("_")[0]


def _required(case: str) -> dict[str, str]:
    return {**DBT_REQUIRED.get(_adapter(case), {}), **DBT_REQUIRED.get(case, {})}


def _output(prof: RenderedProfile) -> dict[str, Any]:
    return prof.document[prof.profile_name]["outputs"][prof.target_name]


def _with_output(prof: RenderedProfile, output: dict[str, Any]) -> RenderedProfile:
    outputs = {prof.target_name: output}
    document = {prof.profile_name: {"target": prof.target_name, "outputs": outputs}}
    return RenderedProfile(prof.profile_name, prof.target_name, document, prof.env)


def _variants() -> Iterator[tuple[str, RenderedProfile]]:
    """The profile as rendered, then once without each required key, then once per key made impossible."""
    for case, conn in CASES.items():
        prof = render_profile(conn, profile_name="probe", target_name="t")
        yield f"{case}:valid", prof
        output = _output(prof)
        for key in _required(case):
            yield f"{case}:drop:{key}", _with_output(prof, {k: v for k, v in output.items() if k != key})
        for key in output:
            if key != "type":
                yield f"{case}:probe:{key}", _with_output(prof, {**output, key: IMPOSSIBLE})
    prof = render_profile(CASES["snowflake_password"], profile_name="probe", target_name="t")
    yield "misspelled", _with_output(prof, {**_output(prof), "warehous": IMPOSSIBLE})


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One probe process over every variant; skips (with uv's error) where the plugins cannot install."""
    try:
        venv = ensure_venv()
    except PluginVenvUnavailable as exc:
        pytest.skip(f"dbt plugins could not be installed here: {exc}")
    root = tmp_path_factory.mktemp("plugins")
    project = root / "project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: probe\nversion: '1.0'\nprofile: probe\n")
    (project / "models" / "one.sql").write_text("select 1 as one\n")
    holders = [(name, ProfilesDir(prof, parent=root), prof.env) for name, prof in _variants()]
    try:
        cases = [{"id": name, "profiles_dir": str(holder.path), "env": env} for name, holder, env in holders]
        (root / "cases.json").write_text(json.dumps({"project_dir": str(project), "cases": cases}))
        proc = subprocess.run([str(venv.python), str(PROBE), str(root / "cases.json"), str(root / "results.json")],
                              capture_output=True, text=True, timeout=600,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(root),
                                   "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        run: dict[str, Any] = json.loads((root / "results.json").read_text())
        run["install_errors"] = venv.install_errors
        return run
    finally:
        for _, holder, _ in holders:
            holder.close()


def _result(run: dict[str, Any], case: str, variant: str) -> dict[str, Any]:
    dist = f"dbt-{_adapter(case)}"
    if run["plugins"].get(dist) is None:
        why = run["install_errors"].get(dist, f"not in {REQUIREMENTS}")
        pytest.skip(f"{dist} could not be installed here, so {case} is not checked: {why}")
    return run["results"][f"{case}:{variant}"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", CASES)
def test_plugin_accepts_the_rendered_profile(plugin_run: dict[str, Any], case: str) -> None:
    result = _result(plugin_run, case, "valid")
    assert result["ok"], f"dbt-{_adapter(case)} rejected the profile of {case}: {result['error']}"


@pytest.mark.parametrize(("case", "key"), [(c, k) for c in CASES for k in _required(c)])
def test_plugin_rejects_the_profile_without_a_required_key(plugin_run: dict[str, Any], case: str,
                                                           key: str) -> None:
    result = _result(plugin_run, case, f"drop:{key}")
    assert not result["ok"], f"dbt-{_adapter(case)} accepted {case} without {key!r}"
    assert _required(case)[key] in result["error"], result["error"]


@pytest.mark.parametrize("case", CASES)
def test_plugin_knows_every_key_we_write(plugin_run: dict[str, Any], case: str) -> None:
    keys = [k for k in _output(render_profile(CASES[case], profile_name="probe", target_name="t"))
            if k != "type" and f"{_adapter(case)}:{k}" not in UNVALIDATED]
    ignored = [k for k in keys if _result(plugin_run, case, f"probe:{k}")["ok"]]
    assert not ignored, (f"dbt-{_adapter(case)} ignores {ignored} (misspelled, or not a setting of this "
                         "plugin): it took an impossible value without complaint")


def test_the_cases_write_every_key_of_the_adapter_table() -> None:
    """Else a key could be added to the table and never meet its plugin."""
    for name, spec in ADAPTERS.items():
        written = {key for case, conn in CASES.items() if _adapter(case) == name
                   for key in _output(render_profile(conn, profile_name="probe", target_name="t"))}
        missing = sorted({f.key for f in spec.fields} - written)
        assert not missing, f"{name}: no case writes {missing}; add a connection to tests/adapter_plugins/cases.py"


def test_a_misspelled_key_is_ignored_by_dbt_so_only_the_probe_finds_it(plugin_run: dict[str, Any]) -> None:
    assert plugin_run["results"]["misspelled"]["ok"], plugin_run["results"]["misspelled"]["error"]


def test_the_plugins_sit_beside_the_projects_dbt_core(plugin_run: dict[str, Any]) -> None:
    assert plugin_run["plugins"]["dbt-core"] == metadata.version("dbt-core"), (
        f"the plugins venv has dbt-core {plugin_run['plugins']['dbt-core']}, the project "
        f"{metadata.version('dbt-core')}: update the pin in {REQUIREMENTS.with_suffix('.in')} and recompile")
    assert set(plugin_run["plugins"]) == {"dbt-core", *PLUGINS}


def test_a_plugin_that_cannot_install_is_reported_with_uvs_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The locked install fails (no hashes), dbt-core installs alone, the plugin's own error is kept."""
    from tests.adapter_plugins import venv as plugin_venv

    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"dbt-core=={metadata.version('dbt-core')}\ndbt-duckdb==0.0.0\n")
    monkeypatch.setattr(plugin_venv, "REQUIREMENTS", requirements)
    monkeypatch.setattr(plugin_venv, "PLUGINS", ("dbt-duckdb",))
    monkeypatch.setenv("DLH_PLUGIN_VENV_ROOT", str(tmp_path / "cache"))
    built = plugin_venv.ensure_venv()
    assert list(built.install_errors) == ["dbt-duckdb"]
    assert built.install_errors["dbt-duckdb"].startswith("uv pip install dbt-duckdb==0.0.0 failed (1):\nerror: ")
    assert not (plugin_venv.venv_path() / ".complete").exists(), "a partial venv is tried again next time"
