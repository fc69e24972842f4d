"""dbt profiles from connection fields, with every secret kept in the environment, never on disk.

Each adapter is a table of :class:`Field` rows: where the value comes from in the connection, whether it
is required, whether it is secret. Secrets are written into profiles.yml only as
``{{ env_var('DBT_ENV_SECRET_...') }}`` (dbt scrubs such values from its logs) and handed to the dbt
process through its environment. Values are never part of the rendered file, so the file, and dbt's
profile hash, stay the same between runs and partial parsing survives.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlh_airflow_common.core.exceptions import DbtProfileException

SECRET_PREFIX = "DBT_ENV_SECRET_"  # noqa: S105 - a prefix dbt scrubs, not a secret


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow Connection a profile needs; kept Airflow-free for the core."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def get(self, source: str) -> Any:
        if source.startswith("extra."):
            return self.extra.get(source[len("extra."):])
        return getattr(self, source)


@dataclass(frozen=True)
class Field:
    """One key of the dbt profile: where it comes from, in order of preference."""

    key: str
    sources: tuple[str, ...] = ()
    required: bool = False
    secret: bool = False
    default: Any = None
    convert: Callable[[Any], Any] | None = None
    native: bool = False  # a secret that is structured data (a JSON key file), rendered with as_native

    def hint(self) -> str:
        names = [s.replace("extra.", "extra field '") + ("'" if s.startswith("extra.") else "") for s in
                 self.sources]
        return " or ".join(names) or "a constant"


@dataclass(frozen=True)
class AdapterSpec:
    """How one dbt adapter's profile is built from a connection."""

    dbt_type: str
    conn_types: tuple[str, ...]
    fields: tuple[Field, ...]
    schema_key: str = "schema"
    derive: Callable[[dict[str, Any], ConnectionInfo], None] | None = None


def _to_int(value: Any) -> int:
    return int(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


_THREADS = Field("threads", ("extra.threads",), default=4, convert=_to_int)


def _pg_like(dbt_type: str, conn_types: tuple[str, ...], port: int) -> AdapterSpec:
    return AdapterSpec(
        dbt_type,
        conn_types,
        (
            Field("host", ("host",), required=True),
            Field("user", ("login",), required=True),
            Field("password", ("password",), secret=True),
            Field("port", ("port", "extra.port"), default=port, convert=_to_int),
            Field("dbname", ("extra.dbname", "extra.database", "schema"), required=True),
            Field("schema", ("extra.schema",), default="public"),
            _THREADS,
            Field("sslmode", ("extra.sslmode",)),
            Field("connect_timeout", ("extra.connect_timeout",), convert=_to_int),
            Field("keepalives_idle", ("extra.keepalives_idle",), convert=_to_int),
            Field("search_path", ("extra.search_path",)),
            Field("role", ("extra.role",)),
            Field("retries", ("extra.retries",), convert=_to_int),
        ),
    )


def _bigquery_method(profile: dict[str, Any], conn: ConnectionInfo) -> None:
    profile["method"] = "service-account-json" if "keyfile_json" in profile else "oauth"


def _trino_method(profile: dict[str, Any], conn: ConnectionInfo) -> None:
    profile.setdefault("method", "ldap" if "password" in profile else "none")


ADAPTERS: dict[str, AdapterSpec] = {
    spec.dbt_type: spec
    for spec in (
        _pg_like("postgres", ("postgres", "postgresql"), 5432),
        _pg_like("redshift", ("redshift",), 5439),
        AdapterSpec(
            "duckdb",
            ("duckdb",),
            (
                Field("path", ("extra.path", "host"), required=True),
                Field("schema", ("schema", "extra.schema"), default="main"),
                _THREADS,
                Field("extensions", ("extra.extensions",)),
                Field("settings", ("extra.settings",)),
            ),
        ),
        AdapterSpec(
            "snowflake",
            ("snowflake",),
            (
                Field("account", ("extra.account", "host"), required=True),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("private_key", ("extra.private_key_content",), secret=True),
                Field("private_key_passphrase", ("extra.private_key_passphrase",), secret=True),
                Field("authenticator", ("extra.authenticator",)),
                Field("role", ("extra.role",)),
                Field("database", ("extra.database",), required=True),
                Field("warehouse", ("extra.warehouse",), required=True),
                Field("schema", ("schema", "extra.schema"), required=True),
                _THREADS,
            ),
        ),
        AdapterSpec(
            "bigquery",
            ("google_cloud_platform", "gcpbigquery", "bigquery"),
            (
                Field("project", ("extra.project", "extra.project_id"), required=True),
                Field("dataset", ("schema", "extra.dataset"), required=True),
                Field("keyfile_json", ("extra.keyfile_dict",), secret=True, convert=_json_text, native=True),
                Field("location", ("extra.location",)),
                Field("priority", ("extra.priority",)),
                _THREADS,
            ),
            schema_key="dataset",
            derive=_bigquery_method,
        ),
        AdapterSpec(
            "trino",
            ("trino",),
            (
                Field("host", ("host",), required=True),
                Field("port", ("port",), default=8080, convert=_to_int),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("database", ("extra.catalog", "extra.database"), required=True),
                Field("schema", ("schema", "extra.schema"), required=True),
                Field("http_scheme", ("extra.protocol", "extra.http_scheme"), default="http"),
                _THREADS,
            ),
            derive=_trino_method,
        ),
        AdapterSpec(
            "dremio",
            ("dremio",),
            (
                Field("software_host", ("host",), required=True),
                Field("port", ("port",), default=9047, convert=_to_int),
                Field("user", ("login",), required=True),
                Field("password", ("password",), secret=True),
                Field("use_ssl", ("extra.use_ssl",), default=False, convert=_to_bool),
                Field("object_storage_source", ("extra.object_storage_source",), default="$scratch"),
                Field("object_storage_path", ("extra.object_storage_path",), default="no_schema"),
                Field("dremio_space", ("extra.dremio_space",), default="@dremio"),
                Field("dremio_space_folder", ("schema", "extra.dremio_space_folder"), default="no_schema"),
                _THREADS,
            ),
            schema_key="dremio_space_folder",
        ),
        AdapterSpec(
            "databricks",
            ("databricks",),
            (
                Field("host", ("host",), required=True),
                Field("http_path", ("extra.http_path",), required=True),
                Field("token", ("password", "extra.token"), required=True, secret=True),
                Field("catalog", ("extra.catalog",)),
                Field("schema", ("schema", "extra.schema"), required=True),
                _THREADS,
            ),
        ),
    )
}


def adapter_for(conn: ConnectionInfo) -> AdapterSpec:
    """The adapter spec for a connection: its ``extra.dbt_adapter`` or its connection type."""
    wanted = str(conn.extra.get("dbt_adapter") or conn.conn_type or "").lower()
    for spec in ADAPTERS.values():
        if wanted == spec.dbt_type or wanted in spec.conn_types:
            return spec
    known = ", ".join(sorted(ADAPTERS))
    raise DbtProfileException(
        f"Connection {conn.conn_id!r} has type {conn.conn_type!r}, which has no dbt profile mapping. "
        f"Use a connection of type {known}, or set extra 'dbt_adapter' to one of them, "
        "or pass profiles_dir with your own profiles.yml"
    )


@dataclass(frozen=True)
class RenderedProfile:
    """A profile ready to hand to dbt: the document (no secret values) and the secret environment."""

    profile_name: str
    target_name: str
    document: dict[str, Any]
    env: dict[str, str]


def render_profile(
    conn: ConnectionInfo,
    *,
    profile_name: str,
    target_name: str,
    schema_override: str | None = None,
) -> RenderedProfile:
    """Build the profile for ``conn``; a missing required field names the field and the fix."""
    spec = adapter_for(conn)
    output: dict[str, Any] = {"type": spec.dbt_type}
    env: dict[str, str] = {}
    for f in spec.fields:
        value = next((v for v in (conn.get(s) for s in f.sources) if v not in (None, "")), None)
        if value is None:
            value = f.default
        if value is None:
            if f.required:
                raise DbtProfileException(
                    f"Connection {conn.conn_id!r} ({spec.dbt_type}) is missing {f.key!r}: "
                    f"set the connection's {f.hint()}"
                )
            continue
        if f.convert is not None:
            try:
                value = f.convert(value)
            except (TypeError, ValueError) as exc:
                raise DbtProfileException(
                    f"Connection {conn.conn_id!r}: {f.key!r} has an invalid value ({exc}); "
                    f"fix the connection's {f.hint()}"
                ) from None
        if f.secret:
            var = SECRET_PREFIX + f.key.upper()
            env[var] = str(value)
            native = " | as_native" if f.native else ""
            value = "{{ env_var('" + var + "')" + native + " }}"
        output[f.key] = value
    if spec.derive is not None:
        spec.derive(output, conn)
    if schema_override:
        output[spec.schema_key] = schema_override
    document = {profile_name: {"target": target_name, "outputs": {target_name: output}}}
    return RenderedProfile(profile_name, target_name, document, env)


class ProfilesDir:
    """A private directory holding one profiles.yml: 0700 dir, 0600 file, removed on close."""

    def __init__(self, profile: RenderedProfile, parent: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="profiles-", dir=parent))  # mkdtemp makes it 0700
        os.chmod(self.path, 0o700)
        target = self.path / "profiles.yml"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(profile.document, fh, sort_keys=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> ProfilesDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_user_profiles_dir(profiles_dir: str | os.PathLike[str]) -> Path:
    """A user-supplied profiles dir must hold profiles.yml; say so before dbt gives a vaguer error."""
    path = Path(profiles_dir).expanduser()
    if not (path / "profiles.yml").is_file():
        raise DbtProfileException(
            f"profiles_dir {str(path)!r} has no profiles.yml; point profiles_dir at the folder holding "
            "profiles.yml, or pass conn_id to build the profile from an Airflow connection"
        )
    return path.resolve()


def user_profile_with_schema(profiles_dir: Path, profile_name: str, target_name: str | None,
                             schema: str) -> RenderedProfile:
    """The user's profile (Jinja left unrendered) with the target's schema replaced.

    Secrets stay whatever the user's file made them (env_var() calls are kept as text); the copy is
    written like ours: 0600 in a 0700 dir, removed after the run.
    """
    try:
        document = yaml.safe_load((profiles_dir / "profiles.yml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise DbtProfileException(f"{profiles_dir / 'profiles.yml'} is not valid YAML: {exc}") from exc
    profile = document.get(profile_name)
    if not isinstance(profile, dict) or not isinstance(profile.get("outputs"), dict):
        raise DbtProfileException(
            f"profiles.yml in {profiles_dir} has no profile {profile_name!r} with outputs; "
            "fix profile_name or the file"
        )
    target = target_name or str(profile.get("target") or "")
    output = profile["outputs"].get(target)
    if not isinstance(output, dict):
        raise DbtProfileException(
            f"profile {profile_name!r} has no target {target!r} (has: {', '.join(profile['outputs'])}); "
            "fix target"
        )
    spec = ADAPTERS.get(str(output.get("type")))
    output[spec.schema_key if spec else "schema"] = schema
    return RenderedProfile(profile_name, target, {profile_name: {**profile, "target": target}}, {})
