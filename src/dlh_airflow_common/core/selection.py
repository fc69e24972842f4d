"""A selection that matches nothing is a mistake unless the user says it is not.

One message for every shape: the render (``dbt ls`` found nothing) and a run (dbt built nothing)
both raise it, so ``single``, ``layers`` and ``nodes`` fail alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Commands that build or test what a selection picks; others (ls, compile, docs, retry) may pick none.
SELECTING = {"build", "run", "test", "seed", "snapshot"}

def _items(value: Sequence[str] | str | None) -> list[str]:
    return [i for i in ([value] if isinstance(value, str) else list(value or [])) if i]


def has_selection(select: Sequence[str] | str | None, exclude: Sequence[str] | str | None,
                  selector: str | None) -> bool:
    return bool(_items(select) or _items(exclude) or selector)


def empty_selection_message(project: str, select: Sequence[str] | str | None,
                            exclude: Sequence[str] | str | None, selector: str | None) -> str:
    return (f"The selection matches nothing in {project} (select={_items(select)}, "
            f"exclude={_items(exclude)}, selector={selector}); check it with `dbt ls` and fix it, or "
            "pass allow_empty_selection=True if an empty selection is expected")


def ran_nothing(words: list[str], run_results: dict[str, Any], nothing_to_do: bool) -> bool:
    """Whether a selecting command ran no node, by dbt's own account (run_results, ``NothingToDo``)."""
    if words[:1] and words[0] not in SELECTING:
        return False
    results = run_results.get("results") if run_results else None
    return nothing_to_do or (isinstance(results, list) and not results)
