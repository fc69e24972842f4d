"""A private, writable workspace for one dbt invocation, so a read-only project can run many at once.

Layout under the runtime root (default ``/tmp/dbt``)::

    runs/run_<YYYYmmdd_HHMMSS>_<dag>_<task>_try<n>_<rand>/
        project/   shadow of the project: symlinks to its entries, private packages dir and lock file
                   (when local packages reach up, ``project/`` mirrors that ancestor and the
                   shadow sits below it at the same relative path as the real project)
        target/    this run's target dir (artifacts, seeded partial-parse file)
        logs/      this run's dbt.log
    projects/<name>-<hash>/
        project -> shadows/<version>       shared shadow of runs other than deps (stable path)
        packages -> packages.d/<version>   last published ``dbt deps`` result (swapped atomically)
        package-lock.yml                   lock file written by that ``dbt deps``
        partial_parse/<key>.msgpack        partial-parse cache, replaced atomically after each run
        shadows/<version>/.dlh_in_use      runs hold a shared flock on their version; pruning takes
                                           an exclusive one, so it never removes a version in use

Everything here is created and checked by ``core.safefs`` (ours, 0700, no link followed); runs on
one project may start together on a fresh root: one of them builds the shared shadow (a flock),
the others wait for it and use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from dlh_airflow_common.core.exceptions import DbtProjectException, DbtRuntimeException
from dlh_airflow_common.core.names import safe_name
from dlh_airflow_common.core.retention import IN_USE, PROJECT_SOURCE, SHADOW_LOCK, ActiveMark
from dlh_airflow_common.core.safefs import ensure_dir, make_dir, open_state_file, remove_tree, secure_root

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_ROOT = "/tmp/dbt"
RUNTIME_ROOT_ENV = "DLH_DBT_RUNTIME_ROOT"
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
LOCK_FILE = "package-lock.yml"
# Entries of the project dbt writes to or that belong to one run only: never linked into the shadow.
_NOT_LINKED = {"target", "logs", LOCK_FILE, ".user.yml"}
_KEEP_PACKAGE_VERSIONS = 3
SHADOW_MARKER = ".dlh_shadow"  # in a shadow version: the fingerprint it was built for
PACKAGES_USED = ".dlh_packages"  # in a shadow version: the published packages dir it links to


def default_runtime_root() -> Path:
    """The runtime root: ``$DLH_DBT_RUNTIME_ROOT`` or ``/tmp/dbt``."""
    return Path(os.environ.get(RUNTIME_ROOT_ENV) or DEFAULT_RUNTIME_ROOT)


@dataclass(frozen=True)
class RunIdentity:
    """Who is running dbt; names the run directory so operators can find it."""

    dag_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None

    def run_name(self, now: datetime | None = None) -> str:
        stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
        suffix = secrets.token_hex(3)
        if self.dag_id and self.task_id:
            return (
                f"run_{stamp}_{safe_name(self.dag_id)}_{safe_name(self.task_id)}"
                f"_try{self.try_number or 1}_{suffix}"
            )
        return f"run_{stamp}_{suffix}"


def validate_project_dir(project_dir: str | os.PathLike[str], argument: str = "dbt_project_dir") -> Path:
    """Resolve the project dir or say precisely why it cannot be used.

    ``argument`` is how the API the user called names it (``DbtProject(project_dir=...)``, ...).
    """
    path = Path(project_dir).expanduser()
    if not path.is_dir():
        raise DbtProjectException(
            f"dbt project directory {str(path)!r} does not exist or is not a directory; "
            f"pass {argument} pointing at the folder that holds dbt_project.yml"
        )
    if not (path / "dbt_project.yml").is_file():
        raise DbtProjectException(
            f"{str(path)!r} has no dbt_project.yml; pass the dbt project's root folder as {argument}"
        )
    return path.resolve()


def project_dir_from_dag_file(dag_file: str | os.PathLike[str], *relative: str) -> Path:
    """Resolve a dbt project that lives next to the DAG file, wherever git-sync mounted it."""
    return validate_project_dir(Path(dag_file).resolve().parent.joinpath(*relative))


def _read_project_yml(project_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise DbtProjectException(f"dbt_project.yml in {project_dir} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DbtProjectException(f"dbt_project.yml in {project_dir} must be a mapping")
    return data


def project_profile_name(project_dir: Path) -> str:
    """The profile the project asks for in its dbt_project.yml (dbt's default: ``default``)."""
    return str(_read_project_yml(project_dir).get("profile") or "default")


def _local_package_paths(project_dir: Path) -> list[str]:
    """Relative ``local:`` package paths, which must resolve from the shadow as from the project.

    dbt resolves the local packages of a local package from the root project too, so they count.
    """
    found: list[str] = []
    pending, seen = [project_dir], set()
    while pending:
        here = pending.pop()
        if here in seen:
            continue
        seen.add(here)
        for local in _declared_locals(here):
            local = os.path.expanduser(local)
            if not os.path.isabs(local):
                found.append(local)
            pending.append(Path(os.path.normpath(project_dir / local)))
    return found


def _declared_locals(package_dir: Path) -> list[str]:
    """The ``local:`` entries of a project's packages.yml and dependencies.yml, as written."""
    found: list[str] = []
    for name in ("packages.yml", "dependencies.yml"):
        path = package_dir / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # dbt itself reports the error with better context
        specs = data.get("packages") if isinstance(data, dict) else None
        for spec in specs if isinstance(specs, list) else []:
            local = spec.get("local") if isinstance(spec, dict) else None
            if isinstance(local, str):
                found.append(local)
    return found


@dataclass
class ProjectCache:
    """Per-project state shared by all runs: published packages, lock file, partial-parse files."""

    root: Path
    runtime_root: Path

    @classmethod
    def for_project(cls, runtime_root: Path, project_dir: Path) -> ProjectCache:
        """The project's cache dir, created (or checked) as ours under a checked runtime root."""
        digest = hashlib.sha256(str(project_dir).encode()).hexdigest()[:12]
        root = secure_root(runtime_root)
        cache = ensure_dir(root, root / "projects" / f"{safe_name(project_dir.name)}-{digest}")
        fd = open_state_file(cache / PROJECT_SOURCE)
        try:  # for retention: the cache of a project dir that is gone (an old bundle version) can go
            if not os.fstat(fd).st_size:
                os.write(fd, str(project_dir).encode())
        finally:
            os.close(fd)
        return cls(cache, root)

    @property
    def packages_link(self) -> Path:
        return self.root / "packages"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def partial_parse_file(self, key: str) -> Path:
        return self.root / "partial_parse" / f"{key}.msgpack"

    def published_packages(self) -> Path | None:
        if self.packages_link.is_symlink() or self.packages_link.is_dir():
            real = self.packages_link.resolve()
            if real.is_dir():
                return real
        return None

    def publish_lock(self, lock_file: Path | None) -> None:
        """Keep the lock file a ``dbt deps`` wrote, for the next runs' shadows."""
        if lock_file is not None and lock_file.is_file():
            _atomic_copy(lock_file, self.lock_file)

    def publish_packages(self, installed: Path, lock_file: Path | None) -> None:
        """Make a finished ``dbt deps`` result the one later runs see, atomically."""
        versions = ensure_dir(self.runtime_root, self.root / "packages.d")
        version = versions / f"{datetime.now():%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        shutil.move(str(installed), version)
        tmp_link = self.root / f".packages.{secrets.token_hex(4)}"
        tmp_link.symlink_to(version)
        os.replace(tmp_link, self.packages_link)
        self.publish_lock(lock_file)
        used = self.packages_in_use()
        for old in sorted(versions.iterdir())[:-_KEEP_PACKAGE_VERSIONS]:
            if str(old.resolve()) not in used:  # a shadow (maybe a live run's) still links to it
                remove_tree(self.runtime_root, old)

    def packages_in_use(self) -> set[str]:
        """The published package versions the project's shadow versions link to."""
        used = set()
        for version in _plain_entries(self.root / "shadows"):
            with contextlib.suppress(OSError):
                used.add((version / PACKAGES_USED).read_text())
        return used


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy so that readers see the old or the new file, never half of one."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class DbtRuntime:
    """The workspace of one invocation; create with :meth:`create`, finish with :meth:`cleanup`."""

    project_dir: Path
    run_dir: Path
    cache: ProjectCache
    shadow_dir: Path
    packages_install_path: str
    keep_target_artifacts: bool = False
    _seeded_parse_mtime: float | None = field(default=None, repr=False)
    _parse_key: str = field(default="default", repr=False)
    _parse_target: Path | None = field(default=None, repr=False)
    _layout: _ShadowLayout | None = field(default=None, repr=False)
    _active: ActiveMark | None = field(default=None, repr=False)  # retention skips a live run's dir
    _in_use: int | None = field(default=None, repr=False)  # shared lock on the shadow version used
    _shadow_pattern: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        """The (checked) runtime root this run lives under."""
        return self.cache.runtime_root

    @property
    def target_dir(self) -> Path:
        return self.run_dir / "target"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def packages_dir(self) -> Path:
        return self.shadow_dir / self.packages_install_path

    @classmethod
    def create(
        cls,
        project_dir: str | os.PathLike[str],
        *,
        runtime_root: str | os.PathLike[str] | None = None,
        identity: RunIdentity | None = None,
        keep_target_artifacts: bool = False,
        for_deps: bool = False,
    ) -> DbtRuntime:
        project = validate_project_dir(project_dir)
        install_path = str(_read_project_yml(project).get("packages-install-path") or "dbt_packages")
        cache = ProjectCache.for_project(Path(runtime_root) if runtime_root else default_runtime_root(),
                                         project)
        root = cache.runtime_root
        run_dir = make_dir(root, root / "runs" / (identity or RunIdentity()).run_name())
        active = ActiveMark(run_dir)
        in_use: int | None = None
        try:
            layout = _ShadowLayout(project, install_path, cache)
            if for_deps:
                # dbt deps writes the packages dir and lock file: give it a private shadow of its own.
                shadow = layout.build(run_dir / "project", private_packages=True)
            else:
                shadow, in_use = layout.shared()
            runtime = cls(project, run_dir, cache, shadow, install_path, keep_target_artifacts)
            runtime._layout, runtime._active, runtime._in_use = layout, active, in_use
            runtime.target_dir.mkdir(mode=0o700)
            runtime.log_dir.mkdir(mode=0o700)
            return runtime
        except BaseException as exc:  # leave nothing behind; our own failure, said as such
            if in_use is not None:
                os.close(in_use)
            active.release()
            remove_tree(root, run_dir)
            if isinstance(exc, OSError):
                raise DbtRuntimeException(_workspace_error(exc, project, root)) from exc
            raise

    def seed_partial_parse(self, key: str, target_dir: Path | None = None) -> bool:
        """Start from the project's last parse so dbt re-parses only what changed.

        ``target_dir`` is a caller-owned target dir (``target_path``); its own parse file wins.
        """
        self._parse_key = key
        self._parse_target = target_dir or self.target_dir
        cached = self.cache.partial_parse_file(key)
        dest = self._parse_target / PARTIAL_PARSE_FILE
        if not cached.is_file() or dest.exists():
            return False
        try:
            shutil.copyfile(cached, dest)
        except OSError as exc:
            log.warning("Could not seed partial parse from %s: %s", cached, exc)
            return False
        self._seeded_parse_mtime = dest.stat().st_mtime
        return True

    def publish_partial_parse(self) -> None:
        """Share this run's parse result, if dbt wrote a new one."""
        produced = (self._parse_target or self.target_dir) / PARTIAL_PARSE_FILE
        if not produced.is_file() or produced.stat().st_mtime == self._seeded_parse_mtime:
            return
        try:
            _atomic_copy(produced, self.cache.partial_parse_file(self._parse_key))
        except OSError as exc:
            log.warning("Could not update the partial-parse cache: %s", exc)

    def publish_packages(self) -> None:
        """After a successful ``dbt deps``: make the installed packages visible to later runs."""
        lock = self.shadow_dir / LOCK_FILE
        if not self.packages_dir.is_dir():
            return
        # dbt links local packages with paths through this run's shadow; point them at the real dirs.
        mirror = self.run_dir / "project"
        for entry in self.packages_dir.iterdir():
            if entry.is_symlink() and self._layout is not None:
                real = self._layout.real_path(Path(os.path.normpath(entry.parent / entry.readlink())), mirror)
                tmp = entry.with_name(f".{entry.name}.{secrets.token_hex(3)}")
                tmp.symlink_to(real)
                os.replace(tmp, entry)  # in place: an absolute install path may be read meanwhile
        if os.path.isabs(self.packages_install_path):
            self.cache.publish_lock(lock if lock.is_file() else None)
        else:
            self.cache.publish_packages(self.packages_dir, lock if lock.is_file() else None)

    def user_paths(self, text: str) -> str:
        """``text`` with paths into the private shadow shown as the user's project paths.

        dbt only sees the shadow (``projects/<name>-<hash>/project``, the version it links to, or a
        deps run's ``runs/<run>/project``); a path there means nothing to whoever reads the error.
        """
        top = str(self._layout.top if self._layout is not None else self.project_dir)
        if self._shadow_pattern is None:  # once per run: it is applied to every dbt event
            self._shadow_pattern = _shadow_paths(self.cache.root, self.run_dir)
        return self._shadow_pattern.sub(lambda m: top, text)

    def cleanup(self) -> None:
        """Remove what the run wrote; keep target and logs when asked to (until retention prunes them)."""
        if self._active is not None:
            self._active.release()
        if self._in_use is not None:
            os.close(self._in_use)
            self._in_use = None
        if not self.run_dir.exists():
            return
        if self.keep_target_artifacts:
            for child in self.run_dir.iterdir():
                if child.name not in {"target", "logs"}:
                    remove_tree(self.root, child)
            log.info("Kept dbt artifacts in %s", self.target_dir)
            return
        remove_tree(self.root, self.run_dir)


class _ShadowLayout:
    """Builds the directory dbt sees as the project: links to the real entries plus writable parts.

    dbt resolves relative ``local:`` packages lexically from the project dir (``../`` is the parent
    of the path it was given), so the shadow sits inside a mirror of the project's ancestors up to
    the highest one a local package reaches: each mirrored dir links the real entries except the
    next dir on the way down. Any relative path then lands where it lands from the real project,
    an ancestor package included, and package files and lock file stay exactly the user's (a
    rewritten packages.yml would change the hash dbt keeps in package-lock.yml and re-resolve).

    Runs other than ``dbt deps`` share one shadow per project at a stable path, because dbt stores
    absolute paths in its partial-parse file: a path that changed per run would defeat the cache.
    The stable path is a symlink swapped atomically to a new version when the project's entries or
    the published packages change; dbt never writes into it (targets and logs go to the run dir).
    """

    def __init__(self, project: Path, install_path: str, cache: ProjectCache) -> None:
        self.project = project
        self.install_path = install_path
        self.install_parts = _install_parts(project, install_path)
        self.cache = cache
        depth = max((_parent_depth(p) for p in _local_package_paths(project)), default=0)
        self.top = project.parents[min(depth, len(project.parents)) - 1] if depth else project
        self.chain = project.relative_to(self.top).parts

    def shadow_in(self, mirror: Path) -> Path:
        """The project's shadow inside a mirror of :attr:`top` rooted at ``mirror``."""
        return mirror.joinpath(*self.chain)

    def real_path(self, path: Path, mirror: Path) -> Path:
        """Where a path through the mirror (as dbt wrote it into a package link) really leads."""
        for root in (mirror, mirror.resolve()):
            with contextlib.suppress(ValueError):
                return (self.top / path.relative_to(root)).resolve()
        return path.resolve()

    def _packages_source(self, private: bool) -> Path | None:
        if private:
            return None
        published = self.cache.published_packages()
        own = self.project / self.install_path
        return published or (own if own.is_dir() else None)

    def _lock_source(self) -> Path | None:
        for lock in (self.cache.lock_file, self.project / LOCK_FILE):
            if lock.is_file():
                return lock
        return None

    def fingerprint(self) -> str:
        dirs = [self.top.joinpath(*self.chain[:i]) for i in range(len(self.chain) + 1)]
        dirs += [self.project.joinpath(*self.install_parts[:i]) for i in range(1, len(self.install_parts))]
        entries = [sorted(os.listdir(d)) if d.is_dir() else None for d in dirs]
        lock = self._lock_source()
        basis = [str(self.top), entries, self.install_path, str(self._packages_source(False)),
                 hashlib.sha256(lock.read_bytes()).hexdigest() if lock else None]
        return hashlib.sha256(repr(basis).encode()).hexdigest()[:16]

    def build(self, mirror: Path, private_packages: bool) -> Path:
        """Create the mirror at ``mirror`` (which must not exist); return the project's shadow in it."""
        real, fake = self.top, mirror
        for name in self.chain:
            _link_entries(real, fake, skip={name})
            real, fake = real / name, fake / name
        shadow = fake
        _link_entries(self.project, shadow, skip=_NOT_LINKED | set(self.install_parts[:1]))
        real, fake = self.project, shadow
        for name, below in zip(self.install_parts, self.install_parts[1:], strict=False):
            # A nested install path (``vendor/pkgs``): the user's other files beside it stay visible.
            real, fake = real / name, fake / name
            _link_entries(real, fake, skip={below})
        lock = self._lock_source()
        if lock is not None:
            shutil.copyfile(lock, shadow / LOCK_FILE)
        if os.path.isabs(self.install_path):
            return shadow  # the user chose an absolute install path: theirs to keep writable
        packages = shadow / self.install_path
        source = self._packages_source(private_packages)
        if private_packages:
            packages.mkdir(mode=0o700)
        elif source is not None:
            packages.symlink_to(source)
        return shadow

    def shared(self) -> tuple[Path, int]:
        """The project's stable shadow path, (re)built if the project or packages changed, and a
        shared lock on the version it leads to: the run holds it, so no prune removes that version."""
        stable = self.cache.root / "project"
        wanted = self.fingerprint()
        for _ in range(10):
            held = _use_version(stable, wanted)
            if held is not None:
                return self.shadow_in(stable), held
            self._publish(stable, wanted)
        raise DbtRuntimeException(
            f"The shared copy of project {self.project} under {self.cache.root} kept changing while this "
            "run tried to use it (other runs publishing other versions of the project or its packages); "
            "run again")

    def _publish(self, stable: Path, wanted: str) -> None:
        """Build and link a shadow for ``wanted``, one builder per project (a flock); then prune."""
        root = self.cache.runtime_root
        lock = open_state_file(self.cache.root / SHADOW_LOCK)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here, then find it built
            with contextlib.suppress(OSError):
                if (stable / SHADOW_MARKER).read_text() == wanted and (stable / IN_USE).is_file():
                    return
            versions = ensure_dir(root, self.cache.root / "shadows")
            version = versions / f"{wanted}-{secrets.token_hex(3)}"
            self.build(version, private_packages=False)
            os.close(open_state_file(version / IN_USE))
            source = self._packages_source(False)
            (version / PACKAGES_USED).write_text(str(source.resolve()) if source else "")
            (version / SHADOW_MARKER).write_text(wanted)
            tmp_link = self.cache.root / f".project.{secrets.token_hex(4)}"
            tmp_link.symlink_to(version)
            os.replace(tmp_link, stable)  # atomic: running dbt processes see the old or the new shadow
            for old in _plain_entries(versions):
                if old.name != version.name:
                    _remove_unused(root, old)
        finally:
            os.close(lock)


def _workspace_error(exc: OSError, project: Path, root: Path) -> str:
    """The headline for a workspace that could not be made: which path, and what happened to it."""
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    what = "vanished (removed by another process)" if isinstance(exc, FileNotFoundError) else exc.strerror
    return (f"Could not prepare the dbt workspace of {project} under the runtime root {root}: {where} "
            f"{what}; nothing of this run was kept")


def _use_version(stable: Path, wanted: str) -> int | None:
    """A shared lock on the shadow version ``stable`` leads to, if it is ``wanted`` and still there."""
    try:
        fd = os.open(stable / IN_USE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a pruner removes this version (ms)
        if os.fstat(fd).st_nlink and (stable / SHADOW_MARKER).read_text() == wanted:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _plain_entries(parent: Path) -> list[Path]:
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    return []


def _remove_unused(root: Path, version: Path) -> None:
    """Remove a shadow version no run holds (its ``IN_USE`` lock free), keeping the lock meanwhile."""
    try:
        fd = os.open(version / IN_USE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if (version / SHADOW_MARKER).exists():
            remove_tree(root, version)  # made before runs held versions: nothing can hold it
        return  # else another builder is still building it
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # a live run uses it
    try:
        remove_tree(root, version)
    finally:
        os.close(fd)


def _shadow_paths(cache_root: Path, run_dir: Path) -> re.Pattern[str]:
    """The mirror roots dbt may print a path under: the stable link, its versions, a deps mirror."""
    roots = []
    for base in {cache_root, cache_root.resolve()}:
        roots += [re.escape(str(base / "shadows")) + r"/[^/\s'\"]+", re.escape(str(base / "project"))]
    roots += [re.escape(str(base / "project")) for base in {run_dir, run_dir.resolve()}]
    return re.compile("(?:" + "|".join(sorted(roots, key=len, reverse=True)) + r")(?![\w.-])")


def _link_entries(real: Path, fake: Path, skip: set[str]) -> None:
    """Make ``fake`` a directory of links to ``real``'s entries, except those named in ``skip``."""
    fake.mkdir(mode=0o700, parents=True)
    if not real.is_dir():
        return
    for entry in real.iterdir():
        if entry.name not in skip:
            (fake / entry.name).symlink_to(entry)


def _install_parts(project: Path, install_path: str) -> tuple[str, ...]:
    """The relative ``packages-install-path`` as path parts; () for an absolute one."""
    if os.path.isabs(install_path):
        return ()
    parts = Path(os.path.normpath(install_path)).parts
    if not parts or parts[0] in {".", ".."}:
        raise DbtProjectException(
            f"packages-install-path {install_path!r} in {project / 'dbt_project.yml'} must be a "
            "directory inside the project or an absolute path"
        )
    return parts


def _parent_depth(rel: str) -> int:
    depth = lowest = 0
    for part in Path(rel).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        lowest = min(lowest, depth)
    return -lowest

