"""The Airflow asset URI of a table dbt builds: one mapping for every adapter we map, Airflow-free.

Where an Airflow provider defines the URI of a table (PostgreSQL, Redshift, Trino, BigQuery), ours is that
form, so an asset of ours and one of another operator on the same table are one asset. Elsewhere it
is the OpenLineage dataset of the table (as our lineage events name it): ``<namespace>/<name>``.
Every URI is already in the form Airflow normalizes it to, so ``Asset(uri).uri == uri``.

Only address fields of the target go in (host, port, account, project, DuckDB file), never a
secret: a field that reads a ``DBT_ENV_SECRET_*`` variable is refused, and so is a value with user
info or a query (a DuckDB ``md:`` path can carry a token there). See docs/assets.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dlh_airflow_common.core.duckdb_lock import file_path, render_path
from dlh_airflow_common.core.exceptions import DbtProfileException
from dlh_airflow_common.core.profiles import SECRET_PREFIX

BUILT_TYPES = ("model", "seed", "snapshot")
_DEFAULT_PORTS = {"postgres": 5432, "redshift": 5439, "trino": 8080, "dremio": 9047}
_SEP = "\x1f"  # ASCII unit separator: in no identifier


class DbtAssetUriException(DbtProfileException):
    """The target cannot name its tables as asset URIs; the message names the field and the fix."""


@dataclass(frozen=True)
class Relation:
    """Where a dbt node lives: ``database`` is the catalog/project where the adapter has one."""

    database: str | None
    schema: str | None
    identifier: str

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> Relation:
        """A manifest node's or source's relation (``alias`` for built nodes, ``identifier`` for sources)."""
        name = node.get("identifier") or node.get("alias") or node.get("name")
        return cls(node.get("database") or None, node.get("schema") or None, str(name))

    def as_list(self) -> list[str | None]:
        return [self.database, self.schema, self.identifier]

    def packed(self) -> str:
        """One string for a cache of thousands (a list of three strings costs three times the memory)."""
        return _SEP.join((self.database or "", self.schema or "", self.identifier))

    @classmethod
    def unpack(cls, text: str) -> Relation:
        database, schema, identifier = text.split(_SEP)
        return cls(database or None, schema or None, identifier)


@dataclass(frozen=True)
class AssetNamespace:
    """A target's address, resolved once; ``uri`` then names any relation of it cheaply."""

    adapter: str
    _uri: Callable[[Relation], str]

    def uri(self, relation: Relation) -> str:
        return self._uri(relation)


def _part(text: str | None) -> str:
    return quote(str(text or ""), safe="")


def _dotted(relation: Relation) -> str:
    """The OpenLineage name of a table: its non-empty parts joined by dots."""
    return quote(".".join(p for p in relation.as_list() if p), safe=".")


def _field(target: Mapping[str, Any], key: str, env: Mapping[str, str], adapter: str) -> str:
    """A non-secret address field of the target, with ``env_var()`` rendered; a clear error otherwise."""
    raw = target.get(key)
    if raw in (None, ""):
        raise DbtAssetUriException(f"The {adapter} target has no {key!r}, which its asset URIs need: set it "
                                   "in the connection (or profiles.yml), or pass emit_assets=False")
    text = str(raw)
    if SECRET_PREFIX in text:
        raise DbtAssetUriException(f"The {adapter} target's {key!r} reads a secret variable "
                                   f"({SECRET_PREFIX}*); an asset URI never holds a secret: use a plain "
                                   "value or variable for it")
    value, why = render_path(text, env)
    if value is None:
        raise DbtAssetUriException(f"The {adapter} target's {key!r} ({text!r}) cannot name asset URIs: "
                                   f"{why}; use a plain value, or pass emit_assets=False")
    return value


def _host(value: str, adapter: str) -> str:
    """A bare host: a scheme is dropped; user info or a path is refused (it may carry a credential)."""
    host = value.split("://", 1)[-1].rstrip("/")
    if "@" in host or "/" in host or "?" in host:
        raise DbtAssetUriException(f"The {adapter} target's host {value!r} is not a bare host name; set the "
                                   "host alone (no user, path or query) in the connection")
    return host


def _port(target: Mapping[str, Any], adapter: str, env: Mapping[str, str]) -> int:
    raw = target.get("port")
    if raw in (None, ""):
        return _DEFAULT_PORTS[adapter]
    try:
        return int(_field(target, "port", env, adapter))
    except ValueError:
        raise DbtAssetUriException(f"The {adapter} target's port {raw!r} is not a number") from None


def _snowflake_account(account: str) -> str:
    """The account as OpenLineage names it: org-account as is; a locator with its region and cloud."""
    parts = account.split(".")
    if "-" in parts[0]:
        return parts[0]
    if len(parts) == 1:
        return f"{parts[0]}.us-west-1.aws"  # a bare locator is in AWS US West (Oregon)
    if len(parts) == 2:
        return f"{parts[0]}.{parts[1]}.aws"
    return account


def _duckdb(target: Mapping[str, Any], env: Mapping[str, str], project_dir: Path | None) -> AssetNamespace:
    """``duckdb:<absolute file path>/<schema>/<table>``: the file, not its name, tells databases apart.

    A relation in a database ``attach``-ed by the profile gets that file; any other (the main file's)
    gets the target's own file. Airflow writes an empty authority as nothing, so the form has no ``//``.
    """
    files: dict[str, str] = {}
    main = _duckdb_file(_field(target, "path", env, "duckdb"), project_dir)
    for attached in target.get("attach") or []:
        if isinstance(attached, Mapping) and attached.get("path"):
            alias = str(attached.get("alias") or Path(str(attached["path"])).stem)
            files[alias] = _duckdb_file(_field(attached, "path", env, "duckdb"), project_dir)

    def uri(rel: Relation) -> str:
        return f"duckdb:{files.get(rel.database or '', main)}/{_part(rel.schema)}/{_part(rel.identifier)}"

    return AssetNamespace("duckdb", uri)


def _duckdb_file(path: str, project_dir: Path | None) -> str:
    if "?" in path:  # md:db?motherduck_token=...: the query is a credential
        path = path.split("?", 1)[0]
    file = file_path(path, project_dir)
    if file is None:
        if path.startswith(("md:", "motherduck:")):
            return "/" + quote(path.split(":", 1)[1] or "my_db", safe="")
        raise DbtAssetUriException(f"The DuckDB path {path!r} is not a file (in-memory), so its tables "
                                   "outlive no run and have no asset URI: use a database file, or pass "
                                   "emit_assets=False")
    return quote(str(file), safe="/")


def asset_namespace(target: Mapping[str, Any], env: Mapping[str, str] | None = None,
                    project_dir: Path | None = None) -> AssetNamespace:
    """The asset namespace of a dbt target (its profile output, ``env_var()`` unrendered).

    ``env`` renders ``env_var()`` in address fields (default: this process's environment);
    ``project_dir`` anchors a relative DuckDB path as dbt runs do.
    """
    env = os.environ if env is None else env
    adapter = str(target.get("type") or "")

    def f(key: str) -> str:
        return _field(target, key, env, adapter)

    if adapter in ("postgres", "redshift", "trino"):
        host, port = _host(f("host"), adapter), _port(target, adapter, env)
        default_db = f("database" if adapter == "trino" else "dbname")
        return AssetNamespace(adapter, lambda r: (
            f"{adapter}://{host}:{port}/{_part(r.database or default_db)}/{_part(r.schema)}/"
            f"{_part(r.identifier)}"))
    if adapter == "bigquery":
        default_project = f("project")
        return AssetNamespace(adapter, lambda r: (
            f"bigquery://{_part(r.database or default_project)}/{_part(r.schema)}/{_part(r.identifier)}"))
    if adapter == "duckdb":
        return _duckdb(target, env, project_dir)
    if adapter == "snowflake":
        base = f"snowflake://{_snowflake_account(_host(f('account'), adapter))}"
    elif adapter == "databricks":
        base = f"databricks://{_host(f('host'), adapter)}"
    elif adapter == "dremio":
        base = f"dremio://{_host(f('software_host'), adapter)}:{_port(target, adapter, env)}"
    else:
        raise DbtAssetUriException(
            f"No asset URI mapping for dbt adapter {adapter!r} (mapped: bigquery, databricks, dremio, "
            "duckdb, postgres, redshift, snowflake, trino); pass emit_assets=False for its tasks")
    return AssetNamespace(adapter, lambda r: f"{base}/{_dotted(r)}")


@dataclass(frozen=True)
class BuiltNode:
    """A model, seed or snapshot dbt built successfully, as run_results.json reports it."""

    unique_id: str
    relation: Relation | None  # None when read without the manifest
    status: str
    execution_time: float | None
    rows_affected: int | None


def built_nodes(run_results: Mapping[str, Any], manifest: Mapping[str, Any] | None = None,
                only: Collection[str] | None = None) -> list[BuiltNode]:
    """What one dbt invocation built (``success`` only): no failed, skipped or unselected node.

    With ``manifest``, each node's relation too (and nodes it does not have, or ephemeral ones, left
    out); ``only`` keeps these unique ids.
    """
    nodes: Mapping[str, Any] = (manifest or {}).get("nodes") or {}
    built: list[BuiltNode] = []
    for result in run_results.get("results") or []:
        uid = str(result.get("unique_id") or "")
        if uid.split(".", 1)[0] not in BUILT_TYPES or result.get("status") != "success":
            continue
        if only is not None and uid not in only:
            continue
        relation = None
        if manifest is not None:
            node = nodes.get(uid)
            if node is None or (node.get("config") or {}).get("materialized") == "ephemeral":
                continue
            relation = Relation.of(node)
        rows = (result.get("adapter_response") or {}).get("rows_affected")
        time = result.get("execution_time")
        built.append(BuiltNode(uid, relation, "success", None if time is None else float(time),
                               rows if isinstance(rows, int) and rows >= 0 else None))
    return built


def read_built(artifacts: Path, only: Collection[str] | None = None) -> tuple[list[BuiltNode], str | None]:
    """The nodes a finished run built, from its artifacts dir, and dbt's invocation id.

    With ``only`` (unique ids whose relations the caller knows) the manifest is not read: at 5,000
    models it is 37 MB and 1.8 s to parse, which a node task would pay for its one node.
    """
    try:
        results = json.loads((artifacts / "run_results.json").read_text())
        manifest = None if only is not None else json.loads((artifacts / "manifest.json").read_text())
    except (OSError, ValueError):
        return [], None
    invocation = (results.get("metadata") or {}).get("invocation_id")
    return built_nodes(results, manifest, only), None if invocation is None else str(invocation)


__all__ = ["AssetNamespace", "BuiltNode", "DbtAssetUriException", "Relation", "asset_namespace",
           "built_nodes", "read_built"]
