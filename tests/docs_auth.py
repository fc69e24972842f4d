"""An auth manager with per-DAG read grants, for tests/test_docs_plugin.py (configured as [core] auth_manager
in its api-server). SimpleAuthManager grants by role only; this adds what FAB or Keycloak would do per DAG."""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

GRANTS_ENV = "DLH_TEST_DAG_GRANTS"  # "user:dag_a,dag_b;other:dag_c": those users may read only those DAGs


def _grants() -> dict[str, set[str]]:
    grants: dict[str, set[str]] = {}
    for entry in filter(None, os.environ.get(GRANTS_ENV, "").split(";")):
        user, _, dags = entry.partition(":")
        grants[user] = set(filter(None, dags.split(",")))
    return grants


class PerDagAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that a user listed in ``$DLH_TEST_DAG_GRANTS`` may read only the DAGs listed."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None,
                          details: Any = None) -> bool:
        granted = _grants().get(user.username)
        if granted is None:
            return bool(super().is_authorized_dag(method=method, user=user, access_entity=access_entity,
                                                  details=details))
        return method == "GET" and details is not None and details.id in granted
