"""Salesforce extraction against recorded REST responses at the HTTP edge, into real DuckDB and PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import responses

from tests.conftest import REPO
from tests.pgserver import PgServer

sys.path.insert(0, str(REPO / "pipelines" / "salesforce" / "dags"))

from salesforce_lib.api import SalesforceApiSource, build_soql
from salesforce_lib.generator import FakeOrg
from salesforce_lib.objects import OBJECTS
from salesforce_lib.store import DuckDbStore, PostgresStore, RawStore

DATA = REPO / "tests" / "data" / "salesforce"
LOGIN = "https://login.salesforce.com/services/Soap/u/59.0"
QUERY_ALL = "https://acme.my.salesforce.com/services/data/v59.0/queryAll/"
MORE = "https://acme.my.salesforce.com/services/data/v59.0/query/01gD0000002HU6KIAW-2000"


@pytest.fixture(params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RawStore]:
    if request.param == "duckdb":
        yield DuckDbStore(str(tmp_path / "warehouse.duckdb"))
        return
    pg: PgServer = request.getfixturevalue("pg")
    name = f"sf_extract_{abs(hash(request.node.name)) % 10**8}"
    pg.execute(f"drop database if exists {name}")
    pg.execute(f"create database {name}")
    yield PostgresStore(pg.dsn(name))


def _login() -> object:
    from simple_salesforce import Salesforce

    return Salesforce(username="integration@acme.example", password="pw", security_token="tok", version="59.0")


def _soql(call: responses.Call) -> str:
    return parse_qs(urlparse(call.request.url).query)["q"][0]


@responses.activate
def test_pagination_and_expired_session_land_every_record(store: RawStore) -> None:
    login_xml = (DATA / "login_response.xml").read_text()
    responses.post(LOGIN, body=login_xml, status=200)
    responses.get(QUERY_ALL, body=(DATA / "query_page1.json").read_text(), status=200)
    responses.get(MORE, body=(DATA / "session_expired.json").read_text(), status=401)  # expired mid-way
    responses.get(MORE, body=(DATA / "query_page2.json").read_text(), status=200)
    store.ensure_schema()
    source = SalesforceApiSource(_login)
    read = store.land("Account", source.fetch("Account", OBJECTS["Account"], store.watermark("Account")))
    assert read == 3 and store.count("Account") == 3
    assert store.watermark("Account") == "2026-03-04T12:00:00.000+0000"
    logins = [c for c in responses.calls if c.request.url.startswith(LOGIN)]
    assert len(logins) == 2  # logged in again after the 401
    assert "WHERE" not in _soql(responses.calls[1])  # first run: no watermark yet
    with store.connect() as con:
        cur = con.cursor()
        cur.execute("select annualrevenue, numberofemployees, isdeleted from raw_salesforce.account "
                    "where id = '0015g00000AbCdEAAA'")
        assert cur.fetchone() == ("2500000.0", "320", "false")  # raw stays text


@responses.activate
def test_boundary_records_are_not_skipped_and_reruns_change_nothing(store: RawStore) -> None:
    responses.post(LOGIN, body=(DATA / "login_response.xml").read_text(), status=200)
    responses.get(QUERY_ALL, body=(DATA / "query_page1.json").read_text(), status=200)
    responses.get(MORE, body=(DATA / "query_page2.json").read_text(), status=200)
    responses.get(QUERY_ALL, body=(DATA / "query_boundary.json").read_text(), status=200)
    responses.get(QUERY_ALL, body=(DATA / "query_boundary.json").read_text(), status=200)
    store.ensure_schema()
    source = SalesforceApiSource(_login)
    store.land("Account", source.fetch("Account", OBJECTS["Account"], store.watermark("Account")))

    def extracted_at() -> list[tuple[object, ...]]:
        with store.connect() as con:
            cur = con.cursor()
            cur.execute("select id, extracted_at from raw_salesforce.account order by id")
            return list(cur.fetchall())

    before = extracted_at()
    # Umbrella shares Initech's SystemModstamp, which is the stored watermark: it must still arrive.
    store.land("Account", source.fetch("Account", OBJECTS["Account"], store.watermark("Account")))
    query_calls = [c for c in responses.calls if c.request.url.startswith(QUERY_ALL)]
    assert "SystemModstamp >= 2026-03-04T12:00:00Z" in _soql(query_calls[-1])
    assert store.count("Account") == 4
    after_first = extracted_at()
    assert after_first[:3] == before  # the re-read boundary record was not rewritten
    # the same extraction again: no duplicates, nothing rewritten
    store.land("Account", source.fetch("Account", OBJECTS["Account"], store.watermark("Account")))
    assert store.count("Account") == 4 and extracted_at() == after_first


def test_failed_batch_leaves_raw_and_watermark_as_they_were(store: RawStore) -> None:
    store.ensure_schema()
    good = [{"Id": "0015g00000AbCdEAAA", "Name": "Acme", "SystemModstamp": "2026-03-02T09:30:00.000+0000"}]
    store.land("Account", good)

    def broken() -> Iterator[dict[str, object]]:
        yield {"Id": "0015g00000AbCdZAAA", "Name": "Half", "SystemModstamp": "2026-03-09T09:30:00.000+0000"}
        raise ConnectionError("network dropped mid-extraction")

    with pytest.raises(ConnectionError):
        store.land("Account", broken(), batch_size=1)
    assert store.count("Account") == 1
    assert store.watermark("Account") == "2026-03-02T09:30:00.000+0000"


def test_generator_is_realistic_and_dirty(tmp_path: Path) -> None:
    org = FakeOrg(tmp_path / "org.json")
    org.populate()
    org.save()
    opps = list(FakeOrg(tmp_path / "org.json").fetch("Opportunity", OBJECTS["Opportunity"], None))
    assert len(opps) == 100 and all(r["attributes"]["type"] == "Opportunity" for r in opps)
    assert any(r["Amount"] == "12O0" for r in opps) and any(r["CloseDate"] == "2026-02-30" for r in opps)
    assert any(r["StageName"] == "Legacy Stage" for r in opps)
    contacts = list(org.fetch("Contact", OBJECTS["Contact"], None))
    accounts = {r["Id"] for r in org.fetch("Account", OBJECTS["Account"], None)}
    assert any(c["AccountId"] not in accounts for c in contacts)  # orphans
    newest = max(r["SystemModstamp"] for r in opps)
    edited = org.late_edits(3)
    changed = list(org.fetch("Opportunity", OBJECTS["Opportunity"], newest))
    assert {r["Id"] for r in changed} >= set(edited)


def test_soql_is_inclusive_and_ordered() -> None:
    soql = build_soql("Contact", ("Id", "SystemModstamp"), "2026-03-04T12:00:00.250+0000")
    assert soql == ("SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp >= 2026-03-04T12:00:00Z "
                    "ORDER BY SystemModstamp, Id")
