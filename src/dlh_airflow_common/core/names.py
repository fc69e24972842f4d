"""One rule for turning ids (DAG, task, run, dbt node) into safe path parts and task ids."""

from __future__ import annotations

import hashlib
import re


def safe_name(text: str, keep: str = "") -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` (and ``keep``) with ``_``, one for one.

    One for one, so names that were already safe stay as they were (run ids, task ids, paths).
    """
    return re.sub(f"[^A-Za-z0-9_{re.escape(keep)}-]", "_", text)


def id_dir(text: str, limit: int = 80) -> str:
    """A path part for an id (DAG, task, run) that no other id maps to.

    ``safe_name`` alone maps ``sales.daily`` and ``sales_daily`` (or ``..`` and ``__``) to one name;
    a short hash of the raw id beside the readable part keeps every id its own dir.
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{safe_name(text)[:limit]}-{digest}"
