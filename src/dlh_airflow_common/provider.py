"""Airflow provider entry point: lets Airflow discover our extra links, trigger, operator and hook.

No connection type of our own: DbtHook builds profiles from the warehouse's own connection types.
"""

from __future__ import annotations

from typing import Any

from dlh_airflow_common import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe this package to Airflow's ProvidersManager."""
    return {
        "package-name": "dlh-airflow-common",
        "name": "dlh dbt Core",
        "description": "Run dbt Core from Apache Airflow in production.",
        "versions": [__version__],
        "extra-links": [
            "dlh_airflow_common.links.DbtDocsLink",
            "dlh_airflow_common.links.DbtArtifactsLink",
        ],
        "triggers": [
            {"integration-name": "dbt Core", "python-modules": ["dlh_airflow_common.triggers.dbt"]},
        ],
        "operators": [
            {"integration-name": "dbt Core", "python-modules": ["dlh_airflow_common.operators.dbt"]},
        ],
        "hooks": [{"integration-name": "dbt Core", "python-modules": ["dlh_airflow_common.hooks.dbt"]}],
        "integrations": [{"integration-name": "dbt Core", "external-doc-url": "https://docs.getdbt.com/"}],
    }
