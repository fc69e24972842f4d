"""Where a rendered DAG's graph comes from: a cache, else dbt itself (``dbt ls``), never a parser of ours.

A DAG file is imported on every parse and by every task on a worker, so the common path must be
cheap: the graph (a few hundred bytes per node, not the manifest) is cached under the runtime root,
keyed by the project's files (or the given manifest's identity), the profile/target/vars and the
selection. With a valid cache, no dbt process starts and ``dbt`` is not even imported.

On a miss, one ``dbt ls`` in the isolated runtime (read-only projects are fine) writes the manifest
and prints what dbt selected; a ``layers`` shape adds one ``dbt ls`` per layer selector.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.exceptions import DbtProjectException
from dlh_airflow_common.core.runtime import ProjectCache, default_runtime_root, validate_project_dir
from dlh_airflow_common.core.selection import empty_selection_message
from dlh_airflow_common.rendering.graph import DbtGraph, DbtGraphError, build_graph

log = logging.getLogger(__name__)

CACHE_VERSION = "4"  # 2: nodes as rows; 3: tests attached by buildable; 4: relations (assets)
# Never part of the project's identity: what dbt writes, and version-control noise.
_SKIP_DIRS = {"target", "logs", "dbt_packages", "dbt_modules", ".git", "__pycache__", "node_modules", ".venv"}


@dataclass(frozen=True)
class GraphSource:
    """Everything that decides the rendered graph, and how to ask dbt when the cache has nothing."""

    project_dir: str
    conn_id: str | None = None
    profiles_dir: str | None = None
    target: str | None = None
    profile_name: str | None = None
    select: Sequence[str] = ()
    exclude: Sequence[str] = ()
    selector: str | None = None
    vars: Mapping[str, Any] | str | None = None
    manifest_path: str | None = None
    runtime_root: str | None = None
    source_freshness: bool = False
    layers: Mapping[str, str] = field(default_factory=dict)
    venv_path: str | None = None
    dbt_executable: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    allow_empty_selection: bool = False

    @property
    def selects_anything(self) -> bool:
        return bool(list(self.select) or list(self.exclude) or self.selector)


@dataclass(frozen=True)
class LoadedGraph:
    graph: DbtGraph
    layers: dict[str, list[str]]  # layer name -> unique ids dbt selected for its selector
    from_cache: bool


def load_graph(source: GraphSource) -> LoadedGraph:
    """The graph of ``source``: from the cache when its key matches, else from dbt (then cached)."""
    project = validate_project_dir(source.project_dir)
    manifest = _given_manifest(source)
    root = Path(source.runtime_root) if source.runtime_root else default_runtime_root()
    cache_dir = ProjectCache.for_project(root, project).root / "graphs"
    cache_file = cache_dir / f"{_cache_key(source, project)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError), gc_paused():
        data = json.loads(cache_file.read_text())
        return LoadedGraph(DbtGraph.from_dict(data["graph"]), data["layers"], True)
    if _from_manifest_alone(source):
        assert manifest is not None
        graph = build_graph(_read_manifest(manifest), None, source_freshness=source.source_freshness)
        layers: dict[str, list[str]] = {}
    else:
        graph, layers = _ask_dbt(source, project, manifest)
    _write_atomically(cache_file, json.dumps({"graph": graph.to_dict(), "layers": layers}))
    return LoadedGraph(graph, layers, False)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a render makes objects it keeps (the cached graph, the
    tasks): each full collection would walk them, and every object of the importing process (Airflow
    included), again; measured, a sixth of a 5,000-node render. Re-enabled on the way out, also on an
    error; a nested pause leaves it to the outer one. Never around a cache miss, which may run dbt."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _from_manifest_alone(source: GraphSource) -> bool:
    """Whether the graph is built from the given manifest without asking dbt (no selection, no layers)."""
    return bool(source.manifest_path) and not source.selects_anything and not source.layers


def _given_manifest(source: GraphSource) -> Path | None:
    if not source.manifest_path:
        return None
    path = Path(source.manifest_path).expanduser()
    if not path.is_file():
        raise DbtProjectException(
            f"manifest_path {str(path)!r} does not exist; build it in CI with `dbt parse` (target/"
            "manifest.json) and ship it with the DAGs, or leave manifest_path unset to parse at render time")
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DbtProjectException(f"manifest {path} is not readable JSON ({exc}); rebuild it with `dbt parse`"
                                  ) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise DbtProjectException(f"{path} is not a dbt manifest (no 'nodes'); pass the manifest.json that "
                                  "`dbt parse` writes to target/")
    return data


def _cache_key(source: GraphSource, project: Path) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    if source.manifest_path:
        st = Path(source.manifest_path).expanduser().stat()
        h.update(repr((str(Path(source.manifest_path).resolve()), st.st_size, st.st_mtime_ns)).encode())
    if not _from_manifest_alone(source):
        # Only dbt reads the project files; a graph built from the manifest alone depends on the
        # manifest's identity above, and hashing every file of a large project would cost more than
        # the rest of the cached render.
        h.update(project_fingerprint(project).encode())
    skip = {"project_dir", "manifest_path", "env_vars"}
    settings = {k: v for k, v in vars(source).items() if k not in skip}
    settings["select"], settings["exclude"] = list(source.select), list(source.exclude)
    settings["layers"] = list(source.layers.items())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def project_fingerprint(project: Path) -> str:
    """A content hash of the project's files and of the local packages it points at."""
    h = hashlib.sha256()
    roots = [project, *_local_package_dirs(project)]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath, name)
                h.update(str(path.relative_to(root)).encode() + b"\0")
                with contextlib.suppress(OSError):
                    h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _local_package_dirs(project: Path) -> list[Path]:
    import yaml

    found: list[Path] = []
    for name in ("packages.yml", "dependencies.yml"):
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
            data = yaml.safe_load((project / name).read_text()) or {}
            for spec in data.get("packages") or []:
                local = spec.get("local") if isinstance(spec, dict) else None
                if isinstance(local, str):
                    path = (project / os.path.expanduser(local)).resolve()
                    if path != project and project not in path.parents and path.is_dir():
                        found.append(path)
    return found


def _has_packages(project: Path) -> bool:
    return any((project / n).is_file() for n in ("packages.yml", "dependencies.yml"))


def _ask_dbt(source: GraphSource, project: Path,
             manifest: Path | None) -> tuple[DbtGraph, dict[str, list[str]]]:
    """Run ``dbt ls`` for the selection (and each layer); build the graph from dbt's answers."""
    from dlh_airflow_common.core.runtime import RunIdentity
    from dlh_airflow_common.hooks.dbt import DbtHook

    captured = Path(tempfile.mkdtemp(prefix="dbt-render-"))

    def keep_manifest(target: Path, _result: object) -> None:
        if (target / "manifest.json").is_file():
            shutil.copyfile(target / "manifest.json", captured / "manifest.json")

    hook = DbtHook(project, conn_id=source.conn_id, profiles_dir=source.profiles_dir, target=source.target,
                   profile_name=source.profile_name, venv_path=source.venv_path,
                   dbt_executable=source.dbt_executable, env_vars=dict(source.env_vars),
                   runtime_root=source.runtime_root, identity=RunIdentity(task_id="render"),
                   artifacts_callback=keep_manifest, progress=log.debug)
    try:
        if _has_packages(project) and ProjectCache.for_project(
                Path(source.runtime_root) if source.runtime_root else default_runtime_root(),
                project).published_packages() is None:
            hook.run_dbt_task("deps")
        selected = hook.list_nodes(list(source.select) or None, list(source.exclude) or None,
                                   source.selector, source.vars)
        if not selected and not source.allow_empty_selection:
            raise DbtGraphError(empty_selection_message(project.name, source.select, source.exclude,
                                                        source.selector))
        layers: dict[str, list[str]] = {}
        for name, layer_select in source.layers.items():
            layers[name] = hook.list_nodes([layer_select], None, None, source.vars)
        manifest_data = _read_manifest(manifest or captured / "manifest.json")
    finally:
        shutil.rmtree(captured, ignore_errors=True)
    return build_graph(manifest_data, selected, source_freshness=source.source_freshness), layers


def _write_atomically(path: Path, text: str) -> None:
    """Readers (other DAG-file imports) see the old cache entry or the new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


__all__ = ["GraphSource", "LoadedGraph", "load_graph", "project_fingerprint"]
