"""Published dbt docs sites: one per dbt project, newest generation wins, readers never see half a site.

Layout under the docs location (a local dir, or ``s3://`` / ``gs://`` / ... through ObjectStoragePath)::

    <location>/<project>/versions/<generated_at>-<random>/{index.html, manifest.json, catalog.json}
    <location>/<project>/current        local: a symlink to versions/<version>, swapped with rename(2)
    <location>/<project>/CURRENT        object storage: a one-object pointer holding <version>

A version is complete before the pointer moves, and the pointer only moves forward (versions are named
by dbt's ``generated_at``), so a slow older task can never replace a newer site.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.runtime import default_runtime_root

LOCATION_ENV = "DLH_DBT_DOCS_LOCATION"
PLUGIN_ENV = "DLH_DBT_DOCS_PLUGIN"
URL_PREFIX = "/dbt-docs"  # where the API server mounts the docs app (docs_plugin.py)
PAGES = ("index.html", "static_index.html")
DATA = ("manifest.json", "catalog.json")
SITE_FILES = (*PAGES, *DATA)
KEEP_VERSIONS = 3  # the current one and two before it, for readers that resolved the pointer just before
GENERATOR_HINT = "a DbtOperator with command='docs generate' (it publishes on success)"
_PROJECT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # dbt project names are identifiers
_VERSION = re.compile(r"^[0-9TZ]+-[0-9a-f]{8}$")


class DocsError(Exception):
    """A docs site that cannot be published or served; the message says what is missing and why."""


def docs_location(given: str | None = None) -> str:
    """Where sites live: the argument, ``$DLH_DBT_DOCS_LOCATION``, ``[dlh_dbt] docs_location``, else
    ``<runtime root>/docs`` (so one host needs no setting)."""
    if given:
        return given
    from dlh_airflow_common._compat import conf

    configured = os.environ.get(LOCATION_ENV) or conf.get("dlh_dbt", "docs_location", fallback=None)
    return str(configured or default_runtime_root() / "docs")


def plugin_enabled() -> bool:
    """Whether the API server serves the docs: ``$DLH_DBT_DOCS_PLUGIN`` / ``[dlh_dbt] docs_plugin``, on by
    default; off, the "dbt Docs" links go to each task's external ``dbt_docs_url`` instead."""
    value = os.environ.get(PLUGIN_ENV)
    if value is not None:
        return value.strip().lower() not in {"0", "false", "no", "off"}
    from dlh_airflow_common._compat import conf

    return bool(conf.getboolean("dlh_dbt", "docs_plugin", fallback=True))


def project_name_of(project_dir: str | Path) -> str | None:
    """The ``name`` in the project's dbt_project.yml (what its docs are published under), or None."""
    import yaml

    try:
        name = (yaml.safe_load((Path(project_dir) / "dbt_project.yml").read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(name) if name and _PROJECT.match(str(name)) else None


def served_url(base_url: str, project: str | None, unique_id: str | None = None) -> str:
    """The served docs page: a node's page (``#!/model/<unique_id>``) or the project's overview."""
    root = f"{base_url.rstrip('/')}{URL_PREFIX}/"
    return f"{root}{project}/{page_fragment(unique_id)}" if project else root


def page_fragment(unique_id: str | None) -> str:
    """dbt docs' route to a node (``#!/model/model.pkg.name``), or to the overview."""
    return f"#!/{unique_id.split('.', 1)[0]}/{unique_id}" if unique_id else "#!/overview"


def check_project(name: str) -> str:
    if not _PROJECT.match(name):
        raise DocsError(f"{name!r} is not a dbt project name (letters, digits and underscores)")
    return name


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def _local(location: str) -> Path:
    return Path(location.removeprefix("file://"))


def _site_files(artifacts: Path) -> tuple[str, list[str]]:
    """The project name and the files to publish; DocsError naming what is missing or corrupt."""
    missing = [n for n in DATA if not (artifacts / n).is_file()]
    if not any((artifacts / p).is_file() for p in PAGES):
        missing.append(" or ".join(PAGES))
    if missing:
        raise DocsError(f"dbt docs generate left no {', '.join(missing)} in its target dir; "
                        "was the command `docs generate`?")
    try:
        metadata = json.loads((artifacts / "manifest.json").read_text(encoding="utf-8"))["metadata"]
        json.loads((artifacts / "catalog.json").read_text(encoding="utf-8"))
        project, generated = str(metadata["project_name"]), str(metadata["generated_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DocsError(f"dbt docs artifacts in {artifacts} are corrupt: {exc!r}") from exc
    stamp = re.sub(r"[^0-9TZ]", "", generated)  # sorts as the generation time, microseconds included
    return check_project(project), [stamp, *(n for n in SITE_FILES if (artifacts / n).is_file())]


def publish_docs(artifacts: Path, location: str | None = None, conn_id: str | None = None) -> str:
    """Publish the docs site a ``docs generate`` run left in ``artifacts``; return its URL or path."""
    project, (stamp, *files) = _site_files(artifacts)
    version = f"{stamp}-{secrets.token_hex(4)}"
    where = docs_location(location)
    if _is_local(where):
        return _publish_local(artifacts, files, _local(where) / project, version)
    return _publish_remote(artifacts, files, where, conn_id, project, version)


@contextlib.contextmanager
def _locked(project_dir: Path) -> Iterator[None]:
    with (project_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _publish_local(artifacts: Path, files: list[str], project_dir: Path, version: str) -> str:
    versions = project_dir / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    staging = versions / f".{version}.partial"
    staging.mkdir()
    for name in files:
        shutil.copyfile(artifacts / name, staging / name)
    staging.rename(versions / version)
    with _locked(project_dir):
        current = _local_current(project_dir)
        if current is None or current < version:
            link = project_dir / f".current-{version}"
            link.symlink_to(Path("versions") / version)
            link.replace(project_dir / "current")  # rename(2): readers see the old or the new site
            current = version
        for old in sorted(p.name for p in versions.iterdir() if _VERSION.match(p.name))[:-KEEP_VERSIONS]:
            if old != current:
                shutil.rmtree(versions / old, ignore_errors=True)
    return str(project_dir / "current")


def _local_current(project_dir: Path) -> str | None:
    try:
        name = Path(os.readlink(project_dir / "current")).name
    except OSError:
        return None
    return name if _VERSION.match(name) else None


def _storage(location: str, conn_id: str | None) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location.rstrip("/") + "/", conn_id=conn_id)


def _publish_remote(artifacts: Path, files: list[str], location: str, conn_id: str | None, project: str,
                    version: str) -> str:
    base = _storage(location, conn_id) / project
    target = base / "versions" / version
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        (target / name).write_bytes((artifacts / name).read_bytes())
    pointer = base / "CURRENT"
    current = pointer.read_text().strip() if pointer.exists() else ""
    if current < version:  # one object PUT: readers get the old or the new pointer
        pointer.write_text(version)
    return str(base)


def _read_pointer(pointer: Any, attempts: int = 20) -> str | None:
    """The CURRENT pointer's version, None when there is none.

    A PUT to S3 or GCS is atomic, but not every filesystem behind ObjectStoragePath is: fsspec's
    memory store and plain files show an empty object while it is written. An empty read is retried
    briefly instead of being taken for version "".
    """
    for _ in range(attempts):
        if not pointer.exists():
            return None
        text = str(pointer.read_text()).strip()
        if text:
            return text
        time.sleep(0.05)
    return ""


class DocsSite:
    """Reads the published sites back, for the API server's docs app."""

    def __init__(self, location: str | None = None, conn_id: str | None = None) -> None:
        self.location = docs_location(location)
        self.conn_id = conn_id

    def projects(self) -> list[str]:
        if _is_local(self.location):
            root = _local(self.location)
            found = [p.name for p in root.iterdir() if (p / "current").is_symlink()] if root.is_dir() else []
        else:
            found = [p.name for p in _storage(self.location, self.conn_id).iterdir()
                     if (p / "CURRENT").exists()]
        return sorted(n for n in found if _PROJECT.match(n))

    def version(self, project: str) -> str:
        """The project's current version (immutable: a new generation gets a new one)."""
        check_project(project)
        if _is_local(self.location):
            version = _local_current(_local(self.location) / project)
        else:
            version = _read_pointer(_storage(self.location, self.conn_id) / project / "CURRENT")
            if version is not None and not _VERSION.match(version):
                raise DocsError(f"the docs pointer of {project!r} is corrupt: {version[:40]!r}")
        if version is None:
            raise DocsError(f"no dbt docs published for project {project!r} under {self.location}; "
                            f"they are generated by {GENERATOR_HINT}")
        return version

    def read(self, project: str, name: str) -> bytes:
        """One file of the project's current site; DocsError (saying what is missing) otherwise."""
        if name not in SITE_FILES:
            raise DocsError(f"{name!r} is not part of a dbt docs site ({', '.join(SITE_FILES)})")
        version = self.version(project)
        if _is_local(self.location):
            path = _local(self.location) / project / "versions" / version / name
            data = path.read_bytes() if path.is_file() else None
        else:
            obj = _storage(self.location, self.conn_id) / project / "versions" / version / name
            data = obj.read_bytes() if obj.exists() else None
        if data is None:
            raise DocsError(f"the dbt docs of {project!r} (version {version}) have no {name}; "
                            f"re-run {GENERATOR_HINT}")
        return data
