"""Pipeline settings, from the environment so one DAG file serves the demo, tests and production."""

from __future__ import annotations

import os
from pathlib import Path

DAGS_DIR = Path(__file__).resolve().parent.parent
WAREHOUSE_CONN_ID = os.environ.get("SALESFORCE_WAREHOUSE_CONN_ID", "warehouse")
SALESFORCE_CONN_ID = os.environ.get("SALESFORCE_CONN_ID", "salesforce_default")


def source_kind() -> str:
    """`api` (the Salesforce REST API) or `generator` (the offline org, for the demo)."""
    return os.environ.get("SALESFORCE_SOURCE", "api")


def generator_state() -> Path:
    return Path(os.environ.get("SALESFORCE_GENERATOR_STATE", "/tmp/salesforce_org.json"))
