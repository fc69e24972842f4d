"""One rule for turning ids (DAG, task, run, dbt node) into safe path parts and task ids."""

from __future__ import annotations

import re


def safe_name(text: str, keep: str = "") -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` (and ``keep``) with ``_``, one for one.

    One for one, so names that were already safe stay as they were (run ids, task ids, paths).
    """
    return re.sub(f"[^A-Za-z0-9_{re.escape(keep)}-]", "_", text)
