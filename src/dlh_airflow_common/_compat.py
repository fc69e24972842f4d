"""Every difference between the supported Airflow versions (3.1 up to 4), in one place.

Modules import Airflow names that moved between minors from here, so a DAG never fails to load on
an older Airflow; a feature that needs a newer Airflow calls ``require_airflow`` when it is used.
"""

from __future__ import annotations

import re
from typing import Any

from airflow import __version__ as _installed

try:  # the Task SDK exports the config parser from Airflow 3.2 on
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSkipException,
    )
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[attr-defined,no-redef]
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSkipException,
    )

MINIMUM_AIRFLOW = "3.1"

__all__ = ["AIRFLOW_VERSION", "MINIMUM_AIRFLOW", "AirflowException", "AirflowNotFoundException",
           "AirflowRescheduleException", "AirflowSkipException", "AirflowVersionError", "airflow_at_least",
           "conf", "redact", "require_airflow", "stats"]


class AirflowVersionError(AirflowFailException):
    """A feature was asked for that the installed Airflow is too old to provide.

    It fails the task without retries: every retry would meet the same Airflow.
    """


def _parse(version: str) -> tuple[int, int]:
    """``"3.1.8"``, ``"3.3"`` or ``"3.2.0rc1"`` -> (major, minor); anything else is a caller's mistake."""
    match = re.match(r"(\d+)\.(\d+)", version.strip()) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"not an Airflow version: {version!r} (expected 'MAJOR.MINOR', e.g. '3.3')")
    return int(match.group(1)), int(match.group(2))


AIRFLOW_VERSION: tuple[int, int] = _parse(_installed)


def airflow_at_least(version: str) -> bool:
    """Whether the installed Airflow is ``version`` (``"MAJOR.MINOR"``) or newer."""
    return AIRFLOW_VERSION >= _parse(version)


def require_airflow(version: str, *, feature: str) -> None:
    """Fail with the feature, the installed and the needed version when Airflow is older than ``version``.

    Called where the feature is used (operator construction or execution), never at import, so a DAG
    that does not use it still loads on the older Airflow.
    """
    if not feature.strip():
        raise ValueError("require_airflow needs the name of the feature that requires the newer Airflow")
    if not airflow_at_least(version):
        raise AirflowVersionError(
            f"{feature} needs Apache Airflow {version} or newer; this environment has Airflow {_installed}. "
            f"Upgrade Airflow to use it, or do without {feature}.")


def redact(text: str) -> str:
    """``text`` through Airflow's secrets masker (the values the task log masks)."""
    import importlib

    try:
        masker = importlib.import_module("airflow.sdk.log").redact
    except AttributeError:  # Airflow 3.1
        masker = importlib.import_module("airflow.sdk.execution_time.secrets_masker").redact
    return str(masker(text))


def stats() -> Any:
    """Airflow's metrics client (StatsD/OpenTelemetry as configured); the Task SDK has it from 3.2 on."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # Airflow 3.1
        from airflow.stats import Stats
    return Stats
