"""dbt profiles from connection fields, with every secret kept in the environment, never on disk.

Each adapter is a table of :class:`Field` rows (``core/adapters.py``): where the value comes from in the
connection, whether it is required, whether it is secret. Secrets are written into profiles.yml only as
``{{ env_var('DBT_ENV_SECRET_...') }}`` (dbt scrubs such values from its logs) and handed to the dbt
process through its environment. Values are never part of the rendered file, so the file, and dbt's
profile hash, stay the same between runs and partial parsing survives.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlh_airflow_common.core.adapters import ADAPTERS, AdapterSpec, Field
from dlh_airflow_common.core.exceptions import DbtProfileException

__all__ = ["ADAPTERS", "SECRET_PREFIX", "AdapterSpec", "ConnectionInfo", "Field", "ProfilesDir",
           "RenderedProfile", "adapter_for", "check_user_profiles_dir", "render_profile",
           "user_profile_with_schema"]

SECRET_PREFIX = "DBT_ENV_SECRET_"  # noqa: S105 - a prefix dbt scrubs, not a secret


class Secrets:
    """The secret environment of one profile, and the ``env_var()`` text that stands in for each value."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}

    @staticmethod
    def var(name: str) -> str:
        return SECRET_PREFIX + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")

    def ref(self, name: str, value: str) -> str:
        """Keep ``value`` in the environment; return what profiles.yml holds instead of it."""
        var = self.var(name)
        self.env[var] = value
        return "{{ env_var('" + var + "') }}"

    def pop(self, name: str) -> str:
        """Take a secret back out (a field that turned out to mean something else, or nothing)."""
        return self.env.pop(self.var(name))


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
        """A connection attribute, or ``extra.KEY``: the extra field ``KEY``, else Airflow's old form key.

        Airflow's connection forms used to store extras as ``extra__<conn_type>__<key>``; connections
        created then still carry them, so both spellings are read (the plain one wins).
        """
        if source.startswith("extra."):
            key = source[len("extra."):]
            value = self.extra.get(key)
            if value in (None, ""):
                value = self.extra.get(f"extra__{self.conn_type}__{key}")
            return value
        return getattr(self, source)


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
    secrets = Secrets()
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
            value = secrets.ref(f.key, str(value))
        output[f.key] = value
    if spec.derive is not None:
        spec.derive(output, conn, secrets)
    if schema_override:
        output[spec.schema_key] = schema_override
    document = {profile_name: {"target": target_name, "outputs": {target_name: output}}}
    return RenderedProfile(profile_name, target_name, document, secrets.env)


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


def user_target(profiles_dir: Path, profile_name: str,
                target_name: str | None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The user's profile, the target dbt will use, and its output block (Jinja left unrendered)."""
    try:
        document = yaml.safe_load((profiles_dir / "profiles.yml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise DbtProfileException(f"{profiles_dir / 'profiles.yml'} is not valid YAML: {exc}") from exc
    profile = document.get(profile_name) if isinstance(document, dict) else None
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
    return profile, target, output


def user_profile_with_schema(profiles_dir: Path, profile_name: str, target_name: str | None,
                             schema: str) -> RenderedProfile:
    """The user's profile (Jinja left unrendered) with the target's schema replaced.

    Secrets stay whatever the user's file made them (env_var() calls are kept as text); the copy is
    written like ours: 0600 in a 0700 dir, removed after the run.
    """
    profile, target, output = user_target(profiles_dir, profile_name, target_name)
    spec = ADAPTERS.get(str(output.get("type")))
    output[spec.schema_key if spec else "schema"] = schema
    return RenderedProfile(profile_name, target, {profile_name: {**profile, "target": target}}, {})
