"""A password made of what breaks naive quoting reaches PostgreSQL intact: through dbt and the raw store.

The suite's server checks passwords (scram-sha-256 on TCP), so a mangled one fails to log in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import REPO
from tests.pgserver import PgServer

sys.path.insert(0, str(REPO / "pipelines" / "salesforce" / "dags"))

from salesforce_lib.objects import RAW_SCHEMA
from salesforce_lib.store import store_for_connection

HARD = "p@ss w'o\"rd %2F/x=1\\ :end"
ROLE = "odd_pw_user"
DATABASE = "odd_pw_wh"


@pytest.fixture(scope="module")
def odd_role(pg: PgServer) -> Iterator[PgServer]:
    literal = HARD.replace("'", "''")
    pg.execute(f"create role {ROLE} login password '{literal}'")
    pg.execute(f"create database {DATABASE} owner {ROLE}")
    yield pg
    pg.execute(f"drop database {DATABASE}")
    pg.execute(f"drop role {ROLE}")


def _airflow_uri(port: int, **query: str) -> str:
    """The connection as AIRFLOW_CONN_* holds it: every part percent-encoded, as Airflow's get_uri does."""
    params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"postgres://{ROLE}:{quote(HARD, safe='')}@127.0.0.1:{port}/{DATABASE}" + (f"?{params}" if params else "")


def test_the_password_is_checked_so_a_wrong_one_fails(odd_role: PgServer) -> None:
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=odd_role.port, dbname=DATABASE, user=ROLE,
                         password=HARD.replace(" ", "")).close()


def test_dbt_build_through_the_hook_with_the_password(odd_role: PgServer, demo_project: Path,
                                                       runtime_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    from dlh_airflow_common.hooks.dbt import DbtHook

    monkeypatch.setenv("AIRFLOW_CONN_ODD_PW", _airflow_uri(odd_role.port, schema="odd", threads="2"))
    assert BaseHook.get_connection("odd_pw").password == HARD
    DbtHook(demo_project, conn_id="odd_pw", runtime_root=str(runtime_root)).run_dbt_task("deps")
    result = DbtHook(demo_project, conn_id="odd_pw", runtime_root=str(runtime_root)).run_dbt_task("build")
    assert result.summary.counts == {"success": 5, "pass": 4, "warn": 1}
    assert odd_role.execute("select count(*) from odd.customer_orders", dbname=DATABASE) == [(5,)]


def test_salesforce_store_connects_with_the_password(odd_role: PgServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    monkeypatch.setenv("AIRFLOW_CONN_ODD_PW_RAW", _airflow_uri(odd_role.port))
    store = store_for_connection(BaseHook.get_connection("odd_pw_raw"))
    store.ensure_schema()
    owner = odd_role.execute(f"select schema_owner from information_schema.schemata "
                             f"where schema_name = '{RAW_SCHEMA}'", dbname=DATABASE)
    assert owner == [(ROLE,)]
