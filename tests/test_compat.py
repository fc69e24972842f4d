"""The Airflow version layer: which Airflow is installed, and what a too-old one says."""

from __future__ import annotations

import importlib
import pkgutil

import airflow
import pytest

from dlh_airflow_common import _compat
from dlh_airflow_common._compat import AirflowVersionError, airflow_at_least, require_airflow
from tests.conftest import needs_airflow

MAJOR, MINOR = (int(part) for part in airflow.__version__.split(".")[:2])
NEXT_MINOR = f"{MAJOR}.{MINOR + 1}"


def test_every_module_imports_on_the_installed_airflow() -> None:
    """What a DAG file does first: an Airflow name missing from this minor would fail here, not at DAG load."""
    import dlh_airflow_common

    names = [m.name for m in pkgutil.walk_packages(dlh_airflow_common.__path__, "dlh_airflow_common.")]
    assert "dlh_airflow_common.operators.dbt" in names and len(names) > 20
    failures = {}
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failures[name] = str(exc)
    assert failures == {}


def test_version_is_the_installed_airflow_and_within_the_supported_range() -> None:
    assert _compat.AIRFLOW_VERSION == (MAJOR, MINOR)
    assert airflow_at_least(_compat.MINIMUM_AIRFLOW) and not airflow_at_least("4.0")
    assert airflow_at_least(f"{MAJOR}.{MINOR}") and not airflow_at_least(NEXT_MINOR)


def test_a_too_old_airflow_names_the_feature_and_both_versions() -> None:
    from airflow.exceptions import AirflowFailException  # where the task runner of 3.1 and 3.3 looks

    require_airflow(f"{MAJOR}.{MINOR}", feature="anything the installed minor has")
    with pytest.raises(AirflowVersionError) as err:
        require_airflow(NEXT_MINOR, feature="per-node start from trigger")
    assert isinstance(err.value, AirflowFailException)  # Airflow fails it without retries
    text = str(err.value)
    assert "per-node start from trigger" in text
    assert f"Airflow {NEXT_MINOR} or newer" in text and f"has Airflow {airflow.__version__}" in text


@pytest.mark.parametrize("version", ["latest", "", "3", "v3.3"])
def test_a_malformed_version_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="not an Airflow version"):
        require_airflow(version, feature="x")


def test_a_feature_must_be_named() -> None:
    with pytest.raises(ValueError, match="name of the feature"):
        require_airflow("3.1", feature=" ")


def test_conf_is_the_task_sdk_parser_where_the_sdk_has_one() -> None:
    import airflow.configuration
    import airflow.sdk

    expected = airflow.sdk.conf if airflow_at_least("3.2") else airflow.configuration.conf
    assert _compat.conf is expected
    assert _compat.conf.get("core", "executor") == "LocalExecutor"  # set by tests/conftest.py


@needs_airflow("3.3")
def test_start_from_trigger_is_allowed_from_airflow_3_3() -> None:
    require_airflow("3.3", feature="per-node start from trigger")


def test_start_from_trigger_below_3_3_fails_with_the_versions_not_an_import_error() -> None:
    if airflow_at_least("3.3"):
        pytest.skip(f"Airflow {airflow.__version__} has start from trigger; the refusal is proven on 3.1")
    with pytest.raises(AirflowVersionError, match=r"needs Apache Airflow 3\.3 or newer"):
        require_airflow("3.3", feature="per-node start from trigger")
