"""The one path from "where the profile comes from" to what a dbt process needs.

Sync runs, the detached supervisor of deferrable runs and lineage all call :func:`resolve_profile`,
so a connection is rendered the same way everywhere and secrets are split off in one place: they
leave as ``DBT_ENV_SECRET_*`` environment variables, never as values in a document.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.core.exceptions import DbtProfileException
from dlh_airflow_common.core.profiles import (
    SECRET_PREFIX,
    ConnectionInfo,
    RenderedProfile,
    check_user_profiles_dir,
    render_profile,
    user_profile_with_schema,
    user_target,
)
from dlh_airflow_common.core.runtime import project_profile_name

DEFAULT_TARGET = "airflow"


@dataclass(frozen=True)
class ProfileConfig:
    """Where dbt's profile comes from: an Airflow connection (rendered) or the user's profiles dir."""

    connection: ConnectionInfo | None = None
    rendered: RenderedProfile | None = None  # already built elsewhere (a detached run gets this)
    profiles_dir: str | None = None
    profile_name: str | None = None
    target_name: str | None = None
    schema_override: str | None = None

    def check(self) -> None:
        if self.profiles_dir is None and self.connection is None and self.rendered is None:
            raise DbtProfileException(
                "No profile given: pass conn_id (an Airflow connection) or profiles_dir")


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile ready for one dbt process.

    Exactly one of ``rendered`` (a document we write, 0600, for the run) and ``user_profiles_dir``
    (the user's own folder, used as it is) is set.
    """

    profile_name: str | None
    target_name: str | None
    rendered: RenderedProfile | None
    user_profiles_dir: Path | None
    secret_env: dict[str, str]

    @property
    def secrets(self) -> list[str]:
        """Values to redact from anything logged or raised."""
        return [v for v in self.secret_env.values() if v]

    def output(self, project_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """The target's output block, Jinja (``env_var()``) unrendered; ``{}`` if there is none.

        For the user's own profiles dir it is read from their profiles.yml (the selected profile, or
        the project's, and target); an unusable file raises :class:`DbtProfileException`.
        """
        if self.rendered is not None:
            profile = self.rendered.document.get(self.rendered.profile_name) or {}
            return dict((profile.get("outputs") or {}).get(self.rendered.target_name) or {})
        if self.user_profiles_dir is None:
            return {}
        name = self.profile_name or project_profile_name(Path(project_dir))
        return dict(user_target(self.user_profiles_dir, name, self.target_name)[2])


def resolve_profile(config: ProfileConfig, project_dir: str | os.PathLike[str],
                    env_vars: Mapping[str, str] | None = None) -> ResolvedProfile:
    """Render the connection (or take the user's profiles dir) and collect every secret variable.

    ``env_vars`` are the user's extra variables for dbt; those named ``DBT_ENV_SECRET_*`` are secrets
    too (a user's own profiles.yml may read them).
    """
    config.check()
    rendered = config.rendered
    user_dir: Path | None = None
    if rendered is None and config.connection is not None:
        rendered = render_profile(
            config.connection,
            profile_name=config.profile_name or project_profile_name(Path(project_dir)),
            target_name=config.target_name or DEFAULT_TARGET,
            schema_override=config.schema_override,
        )
    elif rendered is None and config.profiles_dir:
        user_dir = check_user_profiles_dir(config.profiles_dir)
        if config.schema_override:
            # Route models to another schema without touching the user's file: a private copy.
            rendered = user_profile_with_schema(
                user_dir, config.profile_name or project_profile_name(Path(project_dir)),
                config.target_name, config.schema_override)
            user_dir = None
    secret_env = dict(rendered.env) if rendered else {}
    secret_env.update({k: v for k, v in (env_vars or {}).items() if k.startswith(SECRET_PREFIX)})
    return ResolvedProfile(
        profile_name=rendered.profile_name if rendered else config.profile_name,
        target_name=rendered.target_name if rendered else config.target_name,
        rendered=rendered,
        user_profiles_dir=user_dir,
        secret_env=secret_env,
    )


def plain_env(env_vars: Mapping[str, str] | None) -> dict[str, str]:
    """The user's variables that are not secrets (safe to write into a spec file)."""
    return {k: v for k, v in (env_vars or {}).items() if not k.startswith(SECRET_PREFIX)}
