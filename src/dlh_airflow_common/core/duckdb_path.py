"""A relative DuckDB ``path`` means a file in the project dir, as for a user running dbt there.

dbt runs in a private shadow of the project (``core.runtime``), where DuckDB would resolve a relative
path: the data would land in a hidden dir under the runtime root, and the one-writer lock would guard
another file. So a relative path is made absolute in the profile dbt gets: our rendered document, or
a private copy of the user's profiles.yml (never the file itself). A project dir that cannot be
written is refused for commands that open the database, with the fix.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from dlh_airflow_common.core.duckdb_lock import COMMANDS_WITHOUT_DB, file_path, render_path
from dlh_airflow_common.core.exceptions import DbtProfileException
from dlh_airflow_common.core.profile_setup import ResolvedProfile
from dlh_airflow_common.core.profiles import RenderedProfile, user_target
from dlh_airflow_common.core.runtime import project_profile_name


def anchor_duckdb_path(setup: ResolvedProfile, project_dir: Path, words: Sequence[str],
                       env: Mapping[str, str]) -> ResolvedProfile:
    """``setup`` with a relative DuckDB path made absolute in ``project_dir``; else ``setup`` itself."""
    try:
        output = setup.output(project_dir)
    except DbtProfileException:
        return setup  # dbt will say what is wrong with the file, in its own words
    if output.get("type") != "duckdb":
        return setup
    raw = str(output.get("path") or "")
    rendered, _why = render_path(raw, env)
    if rendered is None or os.path.isabs(os.path.expanduser(rendered)):
        return setup  # only dbt renders that Jinja (the lock says so), or it is absolute already
    file = file_path(rendered, project_dir)
    if file is None:
        return setup
    if words and words[0] not in COMMANDS_WITHOUT_DB:
        _check_writable(raw, file)
    return _with_path(setup, project_dir, str(file))


def _check_writable(raw: str, file: Path) -> None:
    if not file.parent.is_dir():
        problem = f"{file.parent} does not exist"
    elif not os.access(file.parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
        problem = f"{file if file.exists() and not os.access(file, os.W_OK) else file.parent} is read-only"
    else:
        return
    raise DbtProfileException(
        f"The DuckDB path {raw!r} is relative, so it means {file} (in the dbt project dir, as when dbt "
        f"runs there), but {problem}. Set the target's path to an absolute path of a writable file (in "
        "profiles.yml, or the connection's host or extra 'path')")


def _with_path(setup: ResolvedProfile, project_dir: Path, path: str) -> ResolvedProfile:
    """``setup`` with the target's path replaced, in a document of our own."""
    if setup.rendered is not None:
        document = copy.deepcopy(setup.rendered.document)
        profile = document[setup.rendered.profile_name]
        profile["outputs"][setup.rendered.target_name]["path"] = path
        return replace(setup, rendered=replace(setup.rendered, document=document))
    assert setup.user_profiles_dir is not None  # output() found a target, so one of the two is set
    name = setup.profile_name or project_profile_name(project_dir)
    profile, target, output = user_target(setup.user_profiles_dir, name, setup.target_name)
    output["path"] = path  # in the copy user_target read: the user's file stays as it is
    rendered = RenderedProfile(name, target, {name: {**profile, "target": target}}, {})
    return replace(setup, rendered=rendered, user_profiles_dir=None, profile_name=name, target_name=target)
