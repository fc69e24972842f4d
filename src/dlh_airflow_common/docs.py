"""Published dbt docs sites: one per dbt project, newest generation wins, readers never see half a site.

Layout under the docs location (a local dir, or ``s3://`` / ``gs://`` / ... through ObjectStoragePath)::

    <location>/<project>/versions/<generated_at>-<random>/{index.html, manifest.json, catalog.json}
    <location>/<project>/versions/<version>/.published.json   the files written, with their sha256
    <location>/<project>/current        local: a symlink to versions/<version>, swapped with rename(2)
    <location>/<project>/CURRENT        object storage: a one-object pointer holding <version>
    <location>/<project>/.publishers.json  the DAG ids that published the project (kept across versions)

A version is complete before the pointer moves, and the pointer only moves forward (versions are named
by dbt's ``generated_at``), so a slow older task can never replace a newer site.

The API server serves these files as the Airflow origin, so the store serves only what we published:
a file is returned only if it is listed in its version's index and still has the published sha256, and
locally only if it is a regular file reached without following any symlink but ``current`` (which must
point at ``versions/<version>``). A local store is private to the Airflow user: dirs 0700, files 0600,
every entry owned by this uid and not writable by group or others (else a clear DocsError), written with
O_NOFOLLOW/O_EXCL relative to directory fds, and old versions removed without descending through links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
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
INDEX = ".published.json"  # in each version: {"files": {name: sha256}, "dag_id": the publishing DAG}
PUBLISHERS = ".publishers.json"  # in the project dir (object storage too): the publishing DAG ids
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


def served_url(base_url: str, project: str | None) -> str:
    """The served docs page of a project: its overview (``links.node_page`` turns it into a node's)."""
    root = f"{base_url.rstrip('/')}{URL_PREFIX}/"
    return f"{root}{project}/{page_fragment(None)}" if project else root


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


def publish_docs(artifacts: Path, location: str | None = None, conn_id: str | None = None,
                 dag_id: str | None = None) -> str:
    """Publish the docs site a ``docs generate`` run left in ``artifacts``; return its URL or path.

    ``dag_id`` is recorded as a publisher of the project: the docs app shows a project only to users
    who may read one of its publishing DAGs, so a site published without one is shown to nobody.
    """
    project, (stamp, *files) = _site_files(artifacts)
    version = f"{stamp}-{secrets.token_hex(4)}"
    where = docs_location(location)
    if _is_local(where):
        return _publish_local(artifacts, files, _local(where), project, version, dag_id)
    return _publish_remote(artifacts, files, where, conn_id, project, version, dag_id)


# -- the local store: every step relative to a directory fd, never through a symlink we did not make --

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO cannot hang us


def _check_ours(st: os.stat_result, where: Path) -> None:
    """Refuse a store entry another user owns or others may write: they could plant pages we would serve."""
    euid = os.geteuid()
    if st.st_uid != euid:
        raise DocsError(f"the dbt docs store entry {where} is owned by uid {st.st_uid}, not by this process "
                        f"(uid {euid}), so its content cannot be trusted; give it to this user "
                        f"(`chown -R {euid} {where}`) or point {LOCATION_ENV} / [dlh_dbt] docs_location at a "
                        "directory of this user")
    if st.st_mode & 0o022:
        raise DocsError(f"the dbt docs store entry {where} is writable by group or others "
                        f"(mode {stat.S_IMODE(st.st_mode):o}), so anyone could plant pages in it; "
                        f"make it private: `chmod -R go-w {where}` (the publisher creates dirs 0700)")


def _open_root(location: Path, create: bool) -> int:
    """The store's top dir (its configured path may lead through an admin's symlinks; nothing below may)."""
    if create:
        location.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _checked(os.open(location, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), location)


def _checked(fd: int, where: Path) -> int:
    """``fd`` if its entry is ours (:func:`_check_ours`), else closed and refused."""
    try:
        _check_ours(os.fstat(fd), where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(parent: int, name: str, where: Path, create: bool = False) -> int:
    """A sub dir of the store, created 0700 when asked; a symlink or a non-dir in its place is refused."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DocsError(f"{where} is not a directory but a symlink or a file, which the docs store never "
                            f"creates; remove it (the next publish recreates it)") from None
        raise
    return _checked(fd, where)


def _read_regular(parent: int, name: str, where: Path) -> bytes | None:
    """A regular file of ours, never followed through a symlink; None when absent."""
    try:
        fd = os.open(name, _READ, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocsError(f"{where} is a symlink, which the docs store never publishes; it is not served "
                            f"(remove it and re-run {GENERATOR_HINT})") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DocsError(f"{where} is not a regular file, which the docs store never publishes; it is not "
                            f"served (remove it and re-run {GENERATOR_HINT})")
        _check_ours(st, where)
        return fh.read()


def _write_new(parent: int, name: str, data: bytes) -> None:
    """A new 0600 file; fails rather than write through anything already there."""
    with os.fdopen(os.open(name, _NEW_FILE, 0o600, dir_fd=parent), "wb") as fh:
        fh.write(data)


def _copy_in(src: Path, parent: int, name: str) -> str:
    """Copy one artifact into a fresh 0600 file; return its sha256."""
    digest = hashlib.sha256()
    with src.open("rb") as fin, os.fdopen(os.open(name, _NEW_FILE, 0o600, dir_fd=parent), "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _closing(*fds: int) -> Iterator[None]:
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _locked(project_fd: int, where: Path) -> Iterator[None]:
    """The project's publish lock: opened without following a link and without truncating anything."""
    try:
        fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=project_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocsError(f"the docs store's {where / '.lock'} is a symlink, which it never creates; "
                            "remove it (the next publish recreates it)") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DocsError(f"the docs store's {where / '.lock'} is not a regular file; remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _index(files: dict[str, str], dag_id: str | None) -> bytes:
    return json.dumps({"files": files, "dag_id": dag_id}, indent=1, sort_keys=True).encode()


def _publish_local(artifacts: Path, files: list[str], location: Path, project: str, version: str,
                   dag_id: str | None) -> str:
    root = _open_root(location, create=True)
    with _closing(root):
        project_fd = _open_dir(root, project, location / project, create=True)
        with _closing(project_fd):
            versions_dir = location / project / "versions"
            versions = _open_dir(project_fd, "versions", versions_dir, create=True)
            with _closing(versions):
                staging = f".{version}.partial"
                os.mkdir(staging, 0o700, dir_fd=versions)  # a fresh name: fails if anything is there
                stage = _open_dir(versions, staging, versions_dir / staging)
                with _closing(stage):
                    digests = {name: _copy_in(artifacts / name, stage, name) for name in files}
                    _write_new(stage, INDEX, _index(digests, dag_id))
                os.rename(staging, version, src_dir_fd=versions, dst_dir_fd=versions)
                with _locked(project_fd, location / project):
                    if dag_id:
                        _add_publisher(project_fd, location / project, dag_id)
                    current = _local_current(project_fd, location / project, strict=False)
                    if current is None or current < version:
                        link = f".current-{version}"
                        os.symlink(f"versions/{version}", link, dir_fd=project_fd)
                        # rename(2): readers see the old or the new site
                        os.replace(link, "current", src_dir_fd=project_fd, dst_dir_fd=project_fd)
                        current = version
                    for old in sorted(n for n in os.listdir(versions) if _VERSION.match(n))[:-KEEP_VERSIONS]:
                        if old != current:
                            _remove(versions, old)
    return str(location / project / "current")


def _remove(parent: int, name: str) -> None:
    """Remove an old version: a dir is removed by fd (rmtree never descends through a symlink), anything else
    is only unlinked, so nothing outside the store is ever touched."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
    except OSError:
        pass  # a reader's version kept a moment longer; the next publish tries again


def _add_publisher(project_fd: int, where: Path, dag_id: str) -> None:
    """Record ``dag_id`` among the project's publishers (kept across versions); called under the lock."""
    known = _parse_publishers(_read_regular(project_fd, PUBLISHERS, where / PUBLISHERS))
    if dag_id in known:
        return
    tmp = f"{PUBLISHERS}.{secrets.token_hex(4)}"
    _write_new(project_fd, tmp, json.dumps(sorted({*known, dag_id})).encode())
    os.replace(tmp, PUBLISHERS, src_dir_fd=project_fd, dst_dir_fd=project_fd)


def _parse_publishers(raw: bytes | str | None) -> set[str]:
    if not raw:
        return set()
    try:
        found = json.loads(raw)
    except ValueError:
        return set()
    return {str(d) for d in found} if isinstance(found, list) else set()


def _local_current(project_fd: int, where: Path, strict: bool = True) -> str | None:
    """The version ``current`` points at: it must be our link to ``versions/<version>`` and nothing else.
    None when there is none; a foreign pointer raises when ``strict`` (reading) and is replaced otherwise."""
    try:
        target = os.readlink("current", dir_fd=project_fd)
    except FileNotFoundError:
        return None
    except OSError:
        target = "<not a symlink>"
    version = target.removeprefix("versions/")
    if target.startswith("versions/") and _VERSION.match(version):
        return version
    if strict:
        raise DocsError(f"the docs pointer {where / 'current'} does not point at versions/<version> "
                        f"({target[:80]!r}), so it is not served; remove it and re-run {GENERATOR_HINT}")
    return None


def _storage(location: str, conn_id: str | None) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location.rstrip("/") + "/", conn_id=conn_id)


def _publish_remote(artifacts: Path, files: list[str], location: str, conn_id: str | None, project: str,
                    version: str, dag_id: str | None) -> str:
    base = _storage(location, conn_id) / project
    target = base / "versions" / version
    target.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in files:
        data = (artifacts / name).read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        (target / name).write_bytes(data)
    (target / INDEX).write_bytes(_index(digests, dag_id))  # last: a version is served only once it exists
    if dag_id:  # no lock on object storage: a publisher lost to a race is re-added by its next publish
        publishers = base / PUBLISHERS
        known = _parse_publishers(publishers.read_bytes() if publishers.exists() else None)
        if dag_id not in known:
            publishers.write_bytes(json.dumps(sorted({*known, dag_id})).encode())
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
    """Reads the published sites back, for the API server's docs app: only files the publisher wrote, as
    it wrote them (listed with their sha256 in the version's index), are ever returned."""

    def __init__(self, location: str | None = None, conn_id: str | None = None) -> None:
        self.location = docs_location(location)
        self.conn_id = conn_id

    def projects(self) -> list[str]:
        if _is_local(self.location):
            root_path = _local(self.location)
            if not root_path.is_dir():
                return []
            root = _open_root(root_path, create=False)
            with _closing(root):
                found = [n for n in os.listdir(root) if _PROJECT.match(n) and _has_current(root, n)]
        else:
            found = [p.name for p in _storage(self.location, self.conn_id).iterdir()
                     if (p / "CURRENT").exists()]
        return sorted(n for n in found if _PROJECT.match(n))

    def version(self, project: str) -> str:
        """The project's current version (immutable: a new generation gets a new one)."""
        check_project(project)
        if _is_local(self.location):
            with self._local_project(project) as project_fd:
                version = _local_current(project_fd, _local(self.location) / project)
        else:
            version = _read_pointer(_storage(self.location, self.conn_id) / project / "CURRENT")
            if version is not None and not _VERSION.match(version):
                raise DocsError(f"the docs pointer of {project!r} is corrupt: {version[:40]!r}")
        if version is None:
            raise self._unpublished(project)
        return version

    def publishers(self, project: str) -> set[str]:
        """The DAG ids that published the project (who may read one of them may read its docs)."""
        check_project(project)
        if _is_local(self.location):
            where = _local(self.location) / project
            with self._local_project(project) as project_fd:
                known = _parse_publishers(_read_regular(project_fd, PUBLISHERS, where / PUBLISHERS))
        else:
            obj = _storage(self.location, self.conn_id) / project / PUBLISHERS
            known = _parse_publishers(obj.read_bytes() if obj.exists() else None)
        latest = self._index(project, self.version(project)).get("dag_id")
        return known | ({str(latest)} if latest else set())

    def read(self, project: str, name: str) -> bytes:
        """One file of the project's current site, exactly as published; DocsError (saying what is wrong)
        for anything missing, planted, replaced or not a regular file."""
        if name not in SITE_FILES:
            raise DocsError(f"{name!r} is not part of a dbt docs site ({', '.join(SITE_FILES)})")
        version = self.version(project)
        published = self._index(project, version).get("files") or {}
        if _is_local(self.location):
            where = _local(self.location) / project / "versions" / version
            with self._local_version(project, version) as version_fd:
                data = _read_regular(version_fd, name, where / name)
        else:
            obj = _storage(self.location, self.conn_id) / project / "versions" / version / name
            data = obj.read_bytes() if obj.exists() else None
        if data is None or name not in published:
            if data is not None:
                raise DocsError(f"{name} of the dbt docs of {project!r} (version {version}) was not written "
                                f"by the publisher, so it is not served; re-run {GENERATOR_HINT}")
            raise DocsError(f"the dbt docs of {project!r} (version {version}) have no {name}; "
                            f"re-run {GENERATOR_HINT}")
        if hashlib.sha256(data).hexdigest() != published[name]:
            raise DocsError(f"{name} of the dbt docs of {project!r} (version {version}) was changed after it "
                            f"was published, so it is not served; re-run {GENERATOR_HINT}")
        return data

    def _index(self, project: str, version: str) -> dict[str, Any]:
        """The version's index of published files; a version without one was not published by us."""
        if _is_local(self.location):
            where = _local(self.location) / project / "versions" / version / INDEX
            with self._local_version(project, version) as version_fd:
                raw: bytes | None = _read_regular(version_fd, INDEX, where)
        else:
            obj = _storage(self.location, self.conn_id) / project / "versions" / version / INDEX
            raw = obj.read_bytes() if obj.exists() else None
        try:
            index = json.loads(raw) if raw else None
        except ValueError:
            index = None
        if not isinstance(index, dict) or not isinstance(index.get("files"), dict):
            raise DocsError(f"the dbt docs of {project!r} (version {version}) have no valid index of "
                            f"published files, so nothing of them is served; re-run {GENERATOR_HINT}")
        return index

    def _unpublished(self, project: str) -> DocsError:
        return DocsError(f"no dbt docs published for project {project!r} under {self.location}; "
                         f"they are generated by {GENERATOR_HINT}")

    @contextlib.contextmanager
    def _local_project(self, project: str) -> Iterator[int]:
        root_path = _local(self.location)
        try:
            root = _open_root(root_path, create=False)
        except FileNotFoundError:
            raise self._unpublished(project) from None
        with _closing(root):
            try:
                project_fd = _open_dir(root, project, root_path / project)
            except FileNotFoundError:
                raise self._unpublished(project) from None
            with _closing(project_fd):
                yield project_fd

    @contextlib.contextmanager
    def _local_version(self, project: str, version: str) -> Iterator[int]:
        where = _local(self.location) / project / "versions"
        with self._local_project(project) as project_fd:
            versions = _open_dir(project_fd, "versions", where)
            with _closing(versions):
                version_fd = _open_dir(versions, version, where / version)
                with _closing(version_fd):
                    yield version_fd


def _has_current(root: int, name: str) -> bool:
    """A project dir (not a link to one) with a ``current`` pointer."""
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=root, follow_symlinks=False).st_mode):
            return False
        return stat.S_ISLNK(os.stat(f"{name}/current", dir_fd=root, follow_symlinks=False).st_mode)
    except OSError:
        return False
