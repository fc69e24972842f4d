"""Runs inside the plugins venv: ``dbt parse`` of a one-model project once per profiles dir.

dbt loads the profile before it parses, through the adapter's own credentials validation, and parsing
needs no warehouse. One process serves every case so dbt and the plugins are imported once.

    python probe.py CASES.json RESULTS.json

CASES.json: {"project_dir": str, "cases": [{"id": str, "profiles_dir": str, "env": {str: str}}]}
RESULTS.json: {"plugins": {dist: version or null}, "results": {id: {"ok": bool, "error": str}}}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from importlib import metadata

PLUGINS = ("dbt-postgres", "dbt-duckdb", "dbt-snowflake", "dbt-bigquery", "dbt-redshift", "dbt-trino",
           "dbt-dremio", "dbt-databricks")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main(cases_path: str, results_path: str) -> None:
    from dbt.cli.main import dbtRunner

    spec = json.loads(open(cases_path).read())
    results: dict[str, dict[str, object]] = {}
    scratch = tempfile.mkdtemp(prefix="probe-")
    for case in spec["cases"]:
        for name, value in case["env"].items():
            os.environ[name] = value
        try:
            res = dbtRunner().invoke([
                "parse", "--project-dir", spec["project_dir"], "--profiles-dir", case["profiles_dir"],
                "--target-path", os.path.join(scratch, "target"), "--log-path", scratch,
                "--no-partial-parse", "--quiet", "--no-version-check", "--no-send-anonymous-usage-stats",
            ])
            error = "" if res.success else str(res.exception or res.result or "failed without an exception")
        except BaseException as exc:  # a plugin that raises outside dbt's own handling is a finding too
            error = f"{type(exc).__name__}: {exc}"
        finally:
            for name in case["env"]:
                os.environ.pop(name, None)
        results[case["id"]] = {"ok": not error, "error": error}
    with open(results_path, "w") as fh:
        json.dump({"plugins": {d: _version(d) for d in ("dbt-core", *PLUGINS)}, "results": results}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
