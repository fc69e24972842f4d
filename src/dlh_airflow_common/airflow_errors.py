"""The core's dbt errors as the operator and hook raise them: the same classes, plus ``AirflowException``.

The core stays free of Airflow (its detached supervisor must never import it), so its exceptions
are plain Python. Airflow code paths that test ``isinstance(e, AirflowException)`` still get one:
on its way out of a task, a core error's class is swapped for a subclass that also derives from
``AirflowException``, so ``except DbtCompilationException`` in user code keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dlh_airflow_common._compat import AirflowException
from dlh_airflow_common.core.exceptions import DbtException

_FLAVOURED: dict[type[DbtException], type[DbtException]] = {}


def _flavour(cls: type[DbtException]) -> type[DbtException]:
    name = cls.__name__
    flavoured = type(name, (cls, AirflowException), {"__module__": __name__, "__qualname__": name})
    globals().setdefault(name, flavoured)  # importable by name, so it pickles and serializes
    _FLAVOURED[cls] = flavoured
    return flavoured


def airflow_flavoured(exc: DbtException) -> DbtException:
    """``exc`` itself (same attributes and traceback), now also an ``AirflowException``."""
    if not isinstance(exc, AirflowException):
        exc.__class__ = _FLAVOURED.get(type(exc)) or _flavour(type(exc))
    return exc


@contextmanager
def raised_to_airflow() -> Iterator[None]:
    """Re-raise any core dbt error leaving the block as its Airflow-flavoured self."""
    try:
        yield
    except DbtException as exc:
        airflow_flavoured(exc)
        raise
